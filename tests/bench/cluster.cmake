# cluster_bench: GET latency across nodes (host, peer fetch, Redis, misses) with two tqkvd and
# one redis-server started by the benchmark.
if(TARGET tqkv_client AND TARGET tqkvd AND TARGET tqkv_redis AND TARGET tq AND TQKV_BENCH)
  add_executable(cluster_bench ${CMAKE_CURRENT_LIST_DIR}/cluster_bench.c
                 ${PROJECT_SOURCE_DIR}/tests/integration/tqkvd_harness.c
                 ${PROJECT_SOURCE_DIR}/tests/integration/redis_harness.c)
  target_include_directories(cluster_bench PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration
                             ${PROJECT_SOURCE_DIR}/tests)
  target_compile_definitions(cluster_bench PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
  target_link_libraries(cluster_bench PRIVATE tqkv_client tqkv_redis tq)
  add_dependencies(cluster_bench tqkvd)
endif()
