# Unit tests of storage/: the host arena and the store (tier policy).
if(TARGET tqkv_host)
  tqkv_add_test(test_host SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_host.c
                LIBS tqkv_host LABELS unit)
endif()
if(TARGET tqkv_store)
  tqkv_add_test(test_tiers SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tiers.c
                LIBS tqkv_store LABELS unit)
endif()
