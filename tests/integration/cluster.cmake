# Tests across nodes (daemon/cluster.c): two tqkvd daemons sharing one redis-server started by
# the test (skipped, 77, when redis-server is not installed).
# redis.cmake (which defines the harness library) is included after this file: the harness is
# compiled in here.
if(TARGET tqkvd AND TARGET tqkv_client AND TARGET tqkv_redis AND TARGET tq)
  tqkv_add_test(test_cluster
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cluster.c
                        ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                        ${CMAKE_CURRENT_LIST_DIR}/redis_harness.c
                LIBS tqkv_client tqkv_redis tq Threads::Threads LABELS integration TIMEOUT 120)
  target_include_directories(test_cluster PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_compile_definitions(test_cluster PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
  add_dependencies(test_cluster tqkvd)
  if(TARGET tqkv)
    target_compile_definitions(test_cluster PRIVATE TQKV_CLI_PATH="$<TARGET_FILE:tqkv>")
    add_dependencies(test_cluster tqkv)
  endif()
endif()
