# Integration tests of tqkvd with raw frames: bad input, auth, limits, config, shutdown,
# HELLO/REGISTER semantics. Each starts its own daemon (tqkvd_harness).
if(TARGET tqkvd)
  tqkv_add_test(test_daemon_proto
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_daemon_proto.c
                        ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                LIBS tqkv_proto tq tqkv_common LABELS integration TIMEOUT 120)
  target_include_directories(test_daemon_proto PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_compile_definitions(test_daemon_proto PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
  add_dependencies(test_daemon_proto tqkvd)
endif()
