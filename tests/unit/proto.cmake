# Unit tests of proto/ (framing and header wrappers).
if(TARGET tqkv_proto)
  tqkv_add_test(test_frame SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_frame.c
                LIBS tqkv_proto LABELS unit)
endif()
