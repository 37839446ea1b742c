# Unit tests of libtqkv that need no daemon (chunk keys).
if(TARGET tqkv_client)
  tqkv_add_test(test_chunk_keys SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_chunk_keys.c
                LIBS tqkv_client LABELS unit)
endif()
