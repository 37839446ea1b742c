# libtq, CPU path: the reference codec (scalar) with a run-time selected AVX2 fast path, block
# format, and the reference decode attention. -ffp-contract=off: no fused multiply-add may change
# a code (FORMAT.md, "Reference arithmetic").
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
add_library(tq STATIC
  ${CMAKE_CURRENT_LIST_DIR}/codebook.c
  ${CMAKE_CURRENT_LIST_DIR}/tables.c
  ${CMAKE_CURRENT_LIST_DIR}/recipe.c
  ${CMAKE_CURRENT_LIST_DIR}/codec.c
  ${CMAKE_CURRENT_LIST_DIR}/avx2.c
  ${CMAKE_CURRENT_LIST_DIR}/avx2_group.c
  ${CMAKE_CURRENT_LIST_DIR}/block.c
  ${CMAKE_CURRENT_LIST_DIR}/attention.c)
set_target_properties(tq PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(tq PUBLIC ${PROJECT_SOURCE_DIR}/include ${CMAKE_CURRENT_LIST_DIR})
target_compile_options(tq PRIVATE $<$<COMPILE_LANGUAGE:C>:-ffp-contract=off -fno-fast-math>)
target_link_libraries(tq PUBLIC tqkv_common PkgConfig::XXHASH m)
