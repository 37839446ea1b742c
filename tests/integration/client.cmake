# Integration tests of libtqkv against a real tqkvd (started by tqkvd_harness on a temp Unix
# socket and an ephemeral loopback port): round trips, eviction, auth, concurrency, put storm.
if(TARGET tqkv_client AND TARGET tqkvd AND TARGET tq)
  foreach(t roundtrip auth evict concurrency storm)
    tqkv_add_test(test_client_${t}
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_client_${t}.c
                          ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                  LIBS tqkv_client tq Threads::Threads
                  LABELS integration TIMEOUT 300)
    target_include_directories(test_client_${t} PRIVATE ${CMAKE_CURRENT_LIST_DIR})
    target_compile_definitions(test_client_${t} PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
    add_dependencies(test_client_${t} tqkvd)
  endforeach()
  if(TARGET tqkv)
    tqkv_add_test(test_client_cli
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_client_cli.c
                          ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                  LIBS tqkv_client tq LABELS integration TIMEOUT 120)
    target_include_directories(test_client_cli PRIVATE ${CMAKE_CURRENT_LIST_DIR})
    target_compile_definitions(test_client_cli PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>"
                               TQKV_CLI_PATH="$<TARGET_FILE:tqkv>")
    add_dependencies(test_client_cli tqkvd tqkv)
  endif()
endif()
