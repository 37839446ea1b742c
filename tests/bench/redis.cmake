# Benchmark of the Redis engine against raw hiredis (same server, loop and pipelining depth);
# prints JSON lines. Starts its own redis-server unless given --port.
if(TARGET tqkv_redis AND TQKV_BENCH)
  add_executable(redis_bench ${CMAKE_CURRENT_LIST_DIR}/redis_bench.c
                 ${CMAKE_CURRENT_LIST_DIR}/../integration/redis_harness.c)
  target_include_directories(redis_bench PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../integration)
  target_link_libraries(redis_bench PRIVATE tqkv_redis)
endif()
