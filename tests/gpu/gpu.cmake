# GPU tests of libtq's CUDA path against the CPU reference (label gpu). They need a CUDA build;
# on a machine without a device every case skips (exit 77), which ctest reports as skipped.
if(TARGET tq AND TQKV_CUDA)
  tqkv_add_test(test_cuda_codec SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cuda_codec.c
                LIBS tq LABELS gpu TIMEOUT 300)
  target_include_directories(test_cuda_codec PRIVATE ${PROJECT_SOURCE_DIR}/tests/unit)
endif()
