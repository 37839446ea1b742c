# Unit tests of the SSD engine (storage/ssd). test_ssd_slow runs the kill -9 loop for 20 rounds.
if(TARGET tqkv_ssd)
  tqkv_add_test(test_ssd SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ssd.c
                LIBS tqkv_ssd LABELS unit TIMEOUT 120)
  tqkv_add_test(test_ssd_slow SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ssd.c
                LIBS tqkv_ssd LABELS "unit;slow" TIMEOUT 600)
  target_compile_definitions(test_ssd_slow PRIVATE TQKV_SSD_SLOW=1)
endif()
if(TARGET tqkv_ssd_tier)
  tqkv_add_test(test_ssd_tier SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ssd_tier.c
                LIBS tqkv_ssd_tier LABELS unit TIMEOUT 60)
endif()
# The SSD tier under the store's policy (demotion, promotion, restart).
if(TARGET tqkv_ssd_tier AND TARGET tqkv_store)
  tqkv_add_test(test_ssd_store SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_ssd_store.c
                LIBS tqkv_ssd_tier tqkv_store LABELS unit TIMEOUT 60)
endif()
