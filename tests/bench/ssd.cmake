# Benchmark of the SSD engine against dd (direct I/O) on the same disk; prints JSON lines.
if(TARGET tqkv_ssd AND TQKV_BENCH)
  add_executable(ssd_bench ${CMAKE_CURRENT_LIST_DIR}/ssd_bench.c)
  target_link_libraries(ssd_bench PRIVATE tqkv_ssd)
endif()
