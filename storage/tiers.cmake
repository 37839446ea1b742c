# storage/tiers: the store the daemon calls (index, namespaces, policy) over the tier engines.
pkg_check_modules(TQKV_STORE_DEPS REQUIRED IMPORTED_TARGET libxxhash)
add_library(tqkv_store STATIC ${CMAKE_CURRENT_LIST_DIR}/tiers.c)
target_include_directories(tqkv_store PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(tqkv_store PUBLIC tqkv_host tqkv_common PRIVATE PkgConfig::TQKV_STORE_DEPS)
