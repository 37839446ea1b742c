# Tests of the Redis engine (storage/redis). test_redis_value needs no server (label unit, so it
# also runs under the sanitizers); the others start their own redis-server instances on random
# loopback ports and skip (77) when redis-server is not installed.
if(TARGET tqkv_redis)
  add_library(tqkv_redis_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/redis_harness.c)
  target_include_directories(tqkv_redis_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(tqkv_redis_harness PUBLIC tqkv_redis)

  tqkv_add_test(test_redis_value SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_redis_value.c
                LIBS tqkv_redis LABELS unit)
  tqkv_add_test(test_redis SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_redis.c
                LIBS tqkv_redis_harness LABELS integration TIMEOUT 120)
  tqkv_add_test(test_redis_cluster SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_redis_cluster.c
                LIBS tqkv_redis_harness LABELS integration TIMEOUT 120)
  tqkv_add_test(test_redis_tier SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_redis_tier.c
                LIBS tqkv_redis_harness LABELS integration TIMEOUT 60)
  if(TARGET tqkv_store)
    tqkv_add_test(test_redis_store SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_redis_store.c
                  LIBS tqkv_redis_harness tqkv_store LABELS integration TIMEOUT 60)
  endif()
endif()
