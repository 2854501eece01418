# The CUDA backend's GPU tests (label gpu; exit 77 = skipped without a device). Included from
# tests/CMakeLists.txt inside if(TARGET moesched::cuda). The test is host code (g++); its one .cu
# file defines the backend's kernels. The backend needs cuBLAS, which the moesched::cuda INTERFACE
# target does not link (yet), so this target does.
add_executable(test_cuda_backend ${CMAKE_CURRENT_LIST_DIR}/test_backend.cpp ${CMAKE_CURRENT_LIST_DIR}/test_backend_kernels.cu)
target_include_directories(test_cuda_backend PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..)
target_link_libraries(test_cuda_backend PRIVATE moesched::cuda CUDA::cublas moesched_dev_flags)
add_test(NAME test_cuda_backend COMMAND test_cuda_backend)
set_tests_properties(test_cuda_backend PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300)

# moesched-profile end to end on a small model (needs the tool; MOESCHED_BUILD_TOOLS).
if(TARGET moesched-profile)
  add_executable(test_cuda_profile_tool ${CMAKE_CURRENT_LIST_DIR}/test_profile_tool.cpp)
  target_link_libraries(test_cuda_profile_tool PRIVATE moesched::io CUDA::cudart moesched_dev_flags)
  target_compile_definitions(test_cuda_profile_tool PRIVATE MOESCHED_PROFILE_TOOL="$<TARGET_FILE:moesched-profile>")
  add_dependencies(test_cuda_profile_tool moesched-profile)
  add_test(NAME test_cuda_profile_tool COMMAND test_cuda_profile_tool)
  set_tests_properties(test_cuda_profile_tool PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
