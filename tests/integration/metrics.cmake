# Integration test of tqkvd's Prometheus endpoint (/metrics, /healthz; daemon/metrics.c): a real
# daemon with an ephemeral metrics port, scraped over a plain socket while libtqkv drives it.
if(TARGET tqkvd AND TARGET tqkv_client AND TARGET tqkv_proto AND TARGET tq)
  tqkv_add_test(test_metrics
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c
                        ${CMAKE_CURRENT_LIST_DIR}/tqkvd_harness.c
                LIBS tqkv_client tqkv_proto tq tqkv_common LABELS integration TIMEOUT 120)
  target_include_directories(test_metrics PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_compile_definitions(test_metrics PRIVATE TQKVD_PATH="$<TARGET_FILE:tqkvd>")
  add_dependencies(test_metrics tqkvd)
endif()
