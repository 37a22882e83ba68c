# The optional CUDA core `tempbalance._core_cuda` (included from the top-level CMakeLists.txt).
# TEMPBALANCE_CUDA=AUTO builds it when a CUDA compiler and the cuSOLVER/cuBLAS headers are found, OFF never, ON
# insists (configure error saying what is missing). cuSOLVER/cuBLAS are not linked: the module dlopens the copy the
# user's torch brings (csrc/cuda/libs.h says why), so only their headers are needed here, e.g. from PyPI's
# nvidia-cusolver / nvidia-cublas wheels in the build environment, or TEMPBALANCE_CUDA_INCLUDE=<dir>.
set(TEMPBALANCE_CUDA "AUTO" CACHE STRING "Build the CUDA core: AUTO, ON or OFF")
set_property(CACHE TEMPBALANCE_CUDA PROPERTY STRINGS AUTO ON OFF)
set(TEMPBALANCE_CUDA_INCLUDE "" CACHE PATH "Directory with cusolverDn.h and cublas_v2.h (optional hint)")

function(tb_cuda_skip why)
  if(TEMPBALANCE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "tempbalance: TEMPBALANCE_CUDA=ON but ${why}")
  endif()
  message(STATUS "tempbalance: CUDA core not built: ${why}")
endfunction()

# Decides whether to build; enable_language(CUDA) must then run at file scope (inside a function it leaves the
# language half-configured).
function(tb_cuda_configure)
  set(TB_CUDA_ENABLED OFF PARENT_SCOPE)
  if(TEMPBALANCE_CUDA STREQUAL "OFF")
    message(STATUS "tempbalance: CUDA core not built: TEMPBALANCE_CUDA=OFF")
    return()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(NOT CMAKE_CUDA_COMPILER)
    tb_cuda_skip("no CUDA compiler found (nvcc on PATH or CUDACXX)")
    return()
  endif()

  # Header locations: the hint, the NVIDIA wheels of the build's Python (CUDA 13: nvidia/cu13/include; CUDA 12:
  # nvidia/cusolver/include + nvidia/cublas/include), then the toolkit next to nvcc.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import glob, os, importlib.util as u; s = u.find_spec('nvidia'); \
roots = s.submodule_search_locations if s else []; \
print(';'.join(sorted(d for p in roots for d in glob.glob(os.path.join(p, '*', 'include')))))"
    OUTPUT_VARIABLE _tb_wheel_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  get_filename_component(_tb_nvcc_dir "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  set(_tb_hints ${TEMPBALANCE_CUDA_INCLUDE} ${_tb_wheel_inc} "${_tb_nvcc_dir}/../include")
  find_path(TB_CUSOLVER_INCLUDE cusolverDn.h HINTS ${_tb_hints} NO_DEFAULT_PATH)
  find_path(TB_CUBLAS_INCLUDE cublas_v2.h HINTS ${_tb_hints} NO_DEFAULT_PATH)
  if(NOT TB_CUSOLVER_INCLUDE OR NOT TB_CUBLAS_INCLUDE)
    tb_cuda_skip("cusolverDn.h / cublas_v2.h not found (pip install nvidia-cusolver nvidia-cublas, or set "
                 "TEMPBALANCE_CUDA_INCLUDE)")
    return()
  endif()
  file(STRINGS "${TB_CUSOLVER_INCLUDE}/cusolverDn.h" _tb_batched REGEX "cusolverDnXsyevBatched")
  if(NOT _tb_batched)
    tb_cuda_skip("${TB_CUSOLVER_INCLUDE}/cusolverDn.h predates cusolverDnXsyevBatched (need cuSOLVER >= 11.7.1)")
    return()
  endif()

  set(TB_CUDA_ENABLED ON PARENT_SCOPE)
endfunction()

tb_cuda_configure()
if(TB_CUDA_ENABLED)
  # sm_75 (Turing: the oldest CUDA 13 keeps) .. sm_90 as SASS, plus PTX of sm_90 for later GPUs to JIT.
  if(NOT CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "tempbalance: CUDA core enabled (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs "
                 "${CMAKE_CUDA_ARCHITECTURES}, headers ${TB_CUSOLVER_INCLUDE})")
  pybind11_add_module(_core_cuda csrc/cuda/bindings_cuda.cpp csrc/cuda/libs.cpp csrc/cuda/core_cuda.cu)
  target_include_directories(_core_cuda PRIVATE csrc csrc/cuda
    "${TB_CUSOLVER_INCLUDE}" "${TB_CUBLAS_INCLUDE}" ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(_core_cuda PRIVATE ${CMAKE_DL_LIBS})
  set_target_properties(_core_cuda PROPERTIES CUDA_RUNTIME_LIBRARY Static CUDA_STANDARD 17)
  install(TARGETS _core_cuda LIBRARY DESTINATION tempbalance)
endif()
