# libtq, CUDA path: encode, decode and decode attention over encoded blocks, compiled into the
# `tq` library (kernels/cpu/cpu.cmake defines it). Without TQKV_CUDA, none.c provides the
# tq_cuda_* entry points, which answer TQKV_ENODEVICE.
if(TARGET tq)
  if(TQKV_CUDA)
    set(_tqc_sources
      ${CMAKE_CURRENT_LIST_DIR}/tables.cu
      ${CMAKE_CURRENT_LIST_DIR}/encode.cu
      ${CMAKE_CURRENT_LIST_DIR}/decode.cu
      ${CMAKE_CURRENT_LIST_DIR}/attention.cu
      ${CMAKE_CURRENT_LIST_DIR}/attention_mma.cu
      ${CMAKE_CURRENT_LIST_DIR}/host_encode.cu)
    target_sources(tq PRIVATE ${_tqc_sources})
    # -lineinfo: compute-sanitizer and profilers map faults to source lines. The encoders do not
    # depend on --fmad: every operation that decides a code is an explicit __fadd_rn/__fmul_rn.
    set_source_files_properties(${_tqc_sources} PROPERTIES
      COMPILE_OPTIONS "$<$<COMPILE_LANGUAGE:CUDA>:-lineinfo;-Xcompiler=-Wall>")
    target_include_directories(tq PRIVATE ${CMAKE_CURRENT_LIST_DIR})
    target_link_libraries(tq PUBLIC CUDA::cudart_static)
    target_compile_definitions(tq PUBLIC TQ_HAVE_CUDA=1)
  else()
    target_sources(tq PRIVATE ${CMAKE_CURRENT_LIST_DIR}/none.c)
  endif()
endif()
