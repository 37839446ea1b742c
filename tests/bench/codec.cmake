# Benchmarks of libtq's CPU path: quality (distortion, attention fidelity), speed, and a demo.
if(TARGET tq AND TQKV_BENCH)
  foreach(b tq_quality tq_cpu_speed tq_demo)
    if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/${b}.c)
      add_executable(${b} ${CMAKE_CURRENT_LIST_DIR}/${b}.c)
      target_include_directories(${b} PRIVATE ${PROJECT_SOURCE_DIR}/tests
                                 ${PROJECT_SOURCE_DIR}/tests/unit)
      target_link_libraries(${b} PRIVATE tq m)
    endif()
  endforeach()
endif()
