# tqkv_bench: tqkvd over loopback (libtqkv) against redis-server (hiredis) in the same run.
if(TARGET tqkv_client AND TARGET tqkvd AND TARGET tq AND TQKV_BENCH)
  pkg_check_modules(HIREDIS_BENCH IMPORTED_TARGET hiredis)
  if(HIREDIS_BENCH_FOUND)
    add_executable(tqkv_bench ${CMAKE_CURRENT_LIST_DIR}/tqkv_bench.c
                   ${PROJECT_SOURCE_DIR}/tests/integration/tqkvd_harness.c)
    target_include_directories(tqkv_bench PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
    target_compile_definitions(tqkv_bench PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
    target_link_libraries(tqkv_bench PRIVATE tqkv_client tq PkgConfig::HIREDIS_BENCH
                          Threads::Threads)
    add_dependencies(tqkv_bench tqkvd)
  endif()
endif()
