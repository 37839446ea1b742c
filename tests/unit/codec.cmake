# Unit tests of libtq's CPU path (kernels/cpu).
if(TARGET tq)
  foreach(t quant codec block attention)
    if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/test_tq_${t}.c)
      tqkv_add_test(test_tq_${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tq_${t}.c
                    LIBS tq LABELS unit TIMEOUT 120)
    endif()
  endforeach()
endif()
