# Unit tests of libtq's CPU path (kernels/cpu). test_tq_quant (10^4-sample statistics for
# 3 dims x 4 bit widths x 3 modes) takes ~5 s optimised but minutes under ASan in a Debug
# build, so it also carries `slow`: CI's sanitizer pass (-LE slow) skips it, the normal pass
# runs it. The other codec tests exercise the same code paths under the sanitizers.
if(TARGET tq)
  tqkv_add_test(test_tq_quant SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tq_quant.c
                LIBS tq LABELS unit slow TIMEOUT 300)
  foreach(t codec block attention)
    tqkv_add_test(test_tq_${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_tq_${t}.c
                  LIBS tq LABELS unit TIMEOUT 120)
  endforeach()
  # The same program, with the concurrent first-use case as the first codec call of its process.
  add_test(NAME test_tq_codec_first_use COMMAND test_tq_codec first_use_concurrent)
  set_tests_properties(test_tq_codec_first_use PROPERTIES LABELS unit SKIP_RETURN_CODE 77)
endif()
