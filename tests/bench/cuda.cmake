# GPU benchmarks of libtq's CUDA path (JSON lines; the PyTorch baselines cuda_torch_encode.py and
# cuda_sdpa_bench.py run beside them). Built only in a CUDA build.
if(TARGET tq AND TQKV_CUDA AND TQKV_BENCH)
  foreach(b cuda_encode_bench cuda_attention_bench)
    add_executable(${b} ${CMAKE_CURRENT_LIST_DIR}/${b}.c)
    target_link_libraries(${b} PRIVATE tq m)
  endforeach()
endif()
