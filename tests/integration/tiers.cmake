# Integration tests of tqkvd's lower tiers: the SSD tier across kill -9 and restarts, damaged
# records, the tier policy under a capacity squeeze (test_tiers_ssd), 20 rounds of kill -9 during
# a put storm (test_tiers_storm, label slow) and the Redis tier attached to the daemon, with
# redis-server killed and restarted under load (test_tiers_redis). Each starts its own daemons
# on temp directories (tqkvd_harness) and, for Redis, its own redis-server (redis_harness).
if(TARGET tqkv_client AND TARGET tqkvd AND TARGET tq AND TARGET tqkv_ssd_tier)
  foreach(t ssd storm)
    if(t STREQUAL "storm")
      set(_labels slow)
      set(_timeout 600)
    else()
      set(_labels integration)
      set(_timeout 300)
    endif()
    tqkv_add_test(test_tiers_${t}
                  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tiers_${t}.c
                          ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                  LIBS tqkv_client tq Threads::Threads
                  LABELS ${_labels} TIMEOUT ${_timeout})
    target_include_directories(test_tiers_${t} PRIVATE ${CMAKE_CURRENT_LIST_DIR})
    target_compile_definitions(test_tiers_${t} PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
    add_dependencies(test_tiers_${t} tqkvd)
  endforeach()
endif()
if(TARGET tqkv_client AND TARGET tqkvd AND TARGET tq AND TARGET tqkv_redis_harness)
  tqkv_add_test(test_tiers_redis
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tiers_redis.c
                        ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                LIBS tqkv_client tq tqkv_redis_harness Threads::Threads
                LABELS integration TIMEOUT 120)
  target_include_directories(test_tiers_redis PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_compile_definitions(test_tiers_redis PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
  add_dependencies(test_tiers_redis tqkvd)
endif()
