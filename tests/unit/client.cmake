# Unit tests of libtqkv that need no daemon: chunk keys, and the transport against a scripted
# server thread (pipelining, out-of-order responses, errors).
if(TARGET tqkv_client)
  tqkv_add_test(test_chunk_keys SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_chunk_keys.c
                LIBS tqkv_client LABELS unit)
  tqkv_add_test(test_client_engine SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_client_engine.c
                LIBS tqkv_client tqkv_proto Threads::Threads LABELS unit TIMEOUT 60)
endif()
