# The optional CUDA core `tempbalance._cuda<major>._core_cuda` (included from the top-level CMakeLists.txt).
# TEMPBALANCE_CUDA=AUTO builds it when a CUDA compiler and the cuSOLVER/cuBLAS headers are found, OFF never, ON
# insists (configure error saying what is missing). cuSOLVER/cuBLAS are not linked: the module dlopens the copy the
# user's torch brings (csrc/cuda/libs.h says why), so only their headers are needed here, e.g. from PyPI's
# nvidia-cusolver / nvidia-cublas wheels in the build environment, or TEMPBALANCE_CUDA_INCLUDE=<dir>[;<dir>...].
#
# One variant per CUDA compiler: TEMPBALANCE_CUDA_COMPILERS="<nvcc 12>;<nvcc 13>" builds both into one wheel
# (tempbalance/_cuda12, tempbalance/_cuda13; at run time the one matching torch's CUDA is loaded). Default: the nvcc
# CMake would use (CUDACXX, else nvcc on PATH). Each variant is its own CMake project (csrc/cuda/CMakeLists.txt),
# configured here so that a compiler or header problem is reported (AUTO) or fatal (ON) before anything builds.
set(TEMPBALANCE_CUDA "AUTO" CACHE STRING "Build the CUDA core: AUTO, ON or OFF")
set_property(CACHE TEMPBALANCE_CUDA PROPERTY STRINGS AUTO ON OFF)
set(TEMPBALANCE_CUDA_INCLUDE "" CACHE STRING "Directories with cusolverDn.h and cublas_v2.h (optional hints)")
set(TEMPBALANCE_CUDA_COMPILERS "" CACHE STRING "nvcc executables, one CUDA core variant each (default: CUDACXX/PATH)")

function(tb_cuda_skip why)
  if(TEMPBALANCE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "tempbalance: TEMPBALANCE_CUDA=ON but ${why}")
  endif()
  message(STATUS "tempbalance: CUDA core not built: ${why}")
endfunction()

# Configures the variant for `nvcc` in build/cuda-<index>; on success adds its build to `all` and its module to the
# install. Sets TB_CUDA_MAJORS in the caller to the CUDA majors built so far.
function(tb_cuda_variant nvcc index)
  set(dir "${CMAKE_BINARY_DIR}/cuda-${index}")
  string(REPLACE ";" "\\;" hints "${TEMPBALANCE_CUDA_INCLUDE}")  # one argument, still a list on the other side
  set(args -DCMAKE_CUDA_COMPILER=${nvcc} -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE}
      -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER} -DPython_EXECUTABLE=${Python_EXECUTABLE}
      -Dpybind11_DIR=${pybind11_DIR} "-DTEMPBALANCE_CUDA_INCLUDE=${hints}"
      "-DTEMPBALANCE_GLIBC_STUBS=${TEMPBALANCE_GLIBC_STUBS}")
  if(CMAKE_CUDA_ARCHITECTURES)
    string(REPLACE ";" "\\;" archs "${CMAKE_CUDA_ARCHITECTURES}")
    list(APPEND args "-DCMAKE_CUDA_ARCHITECTURES=${archs}")
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_FUNCTION_LIST_DIR}" -B "${dir}" -G "${CMAKE_GENERATOR}" ${args}
    RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
  file(WRITE "${dir}-configure.log" "${log}")
  if(NOT rc EQUAL 0)
    # the nested project's own FATAL_ERROR says what is missing
    string(REGEX MATCH "tempbalance-cuda: [^\n]*" why "${log}")
    if(NOT why)
      set(why "configuring with ${nvcc} failed (see ${dir}-configure.log)")
    endif()
    tb_cuda_skip("${why}")
    return()
  endif()
  file(READ "${dir}/cuda_major.txt" major)
  if(major IN_LIST TB_CUDA_MAJORS)
    message(FATAL_ERROR "tempbalance: two CUDA compilers of CUDA ${major} in TEMPBALANCE_CUDA_COMPILERS")
  endif()
  string(REGEX MATCH "tempbalance-cuda: enabled[^\n]*" what "${log}")
  message(STATUS "${what}")
  add_custom_target(core_cuda${major} ALL COMMAND "${CMAKE_COMMAND}" --build "${dir}" USES_TERMINAL)
  install(DIRECTORY "${dir}/tempbalance/" DESTINATION tempbalance)
  set(TB_CUDA_MAJORS ${TB_CUDA_MAJORS} ${major} PARENT_SCOPE)
endfunction()

set(TB_CUDA_MAJORS "")
if(TEMPBALANCE_CUDA STREQUAL "OFF")
  message(STATUS "tempbalance: CUDA core not built: TEMPBALANCE_CUDA=OFF")
else()
  set(_tb_compilers ${TEMPBALANCE_CUDA_COMPILERS})
  if(NOT _tb_compilers)
    if(DEFINED ENV{CUDACXX})
      set(_tb_compilers "$ENV{CUDACXX}")
    else()
      find_program(TB_NVCC nvcc)
      if(TB_NVCC)
        set(_tb_compilers "${TB_NVCC}")
      endif()
    endif()
  endif()
  if(NOT _tb_compilers)
    tb_cuda_skip("no CUDA compiler found (nvcc on PATH or CUDACXX)")
  endif()
  set(_tb_index 0)
  foreach(_tb_nvcc IN LISTS _tb_compilers)
    if(NOT EXISTS "${_tb_nvcc}")
      tb_cuda_skip("no CUDA compiler found (${_tb_nvcc} does not exist)")
    else()
      tb_cuda_variant("${_tb_nvcc}" ${_tb_index})
    endif()
    math(EXPR _tb_index "${_tb_index} + 1")
  endforeach()
endif()
