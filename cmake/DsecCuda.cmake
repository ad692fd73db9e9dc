# Optional CUDA: sets DSEC_HAVE_CUDA when nvcc is present and works, and
# enables the CUDA language; otherwise prints why and leaves it OFF. Never
# fails the configure. Included from DsecDependencies.cmake, i.e. at the top
# directory's scope, which enable_language(CUDA) requires (targets in
# rollout/ and bench/ compile or link CUDA code).
#
#   -DDSEC_ENABLE_CUDA=OFF              skip CUDA entirely
#   -DCMAKE_CUDA_COMPILER=/path/nvcc    pick a toolkit (default: PATH, then
#                                       /usr/local/cuda/bin/nvcc)
#   -DCMAKE_CUDA_ARCHITECTURES=90       SASS targets (default 80;90)
set(DSEC_HAVE_CUDA OFF)
if(NOT DSEC_ENABLE_CUDA)
  message(STATUS "dsec: CUDA disabled (DSEC_ENABLE_CUDA=OFF)")
  return()
endif()

if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  find_program(DSEC_NVCC nvcc PATHS /usr/local/cuda/bin NO_CACHE)
  if(DSEC_NVCC)
    set(CMAKE_CUDA_COMPILER ${DSEC_NVCC} CACHE FILEPATH "CUDA compiler")
  endif()
endif()
if(NOT CMAKE_CUDA_HOST_COMPILER)
  set(CMAKE_CUDA_HOST_COMPILER ${CMAKE_CXX_COMPILER} CACHE FILEPATH
      "Host compiler for nvcc")
endif()
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90 CACHE STRING "CUDA SASS targets")
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "dsec: nvcc not found; CUDA kernels (dsec_moe_cuda) skipped")
  return()
endif()

# check_language only proves nvcc can build something. Before committing to
# enable_language (which fails hard), compile one kernel for the requested
# architectures with the chosen host compiler, in a scratch directory.
set(_dsec_cuda_probe_dir ${CMAKE_BINARY_DIR}/CMakeFiles/dsec_cuda_probe)
file(MAKE_DIRECTORY ${_dsec_cuda_probe_dir})
file(WRITE ${_dsec_cuda_probe_dir}/probe.cu
     "__global__ void K(float* p) { p[threadIdx.x] += 1.0f; }\n"
     "int main() { K<<<1, 32>>>(nullptr); return 0; }\n")
set(_dsec_cuda_arch_flags "")
foreach(_arch ${CMAKE_CUDA_ARCHITECTURES})
  string(REGEX REPLACE "-(real|virtual)$" "" _arch ${_arch})
  list(APPEND _dsec_cuda_arch_flags
       -gencode arch=compute_${_arch},code=sm_${_arch})
endforeach()
execute_process(
    COMMAND ${CMAKE_CUDA_COMPILER} -ccbin ${CMAKE_CUDA_HOST_COMPILER}
            ${_dsec_cuda_arch_flags} -c probe.cu -o probe.o
    WORKING_DIRECTORY ${_dsec_cuda_probe_dir}
    RESULT_VARIABLE _dsec_cuda_probe_rc
    OUTPUT_VARIABLE _dsec_cuda_probe_out
    ERROR_VARIABLE _dsec_cuda_probe_out
    TIMEOUT 120)
if(NOT _dsec_cuda_probe_rc EQUAL 0)
  message(STATUS "dsec: ${CMAKE_CUDA_COMPILER} cannot build for "
                 "${CMAKE_CUDA_ARCHITECTURES} with "
                 "${CMAKE_CUDA_HOST_COMPILER}; CUDA kernels skipped:\n"
                 "${_dsec_cuda_probe_out}")
  return()
endif()

enable_language(CUDA)
find_package(CUDAToolkit)
if(NOT TARGET CUDA::cudart_static)
  message(STATUS "dsec: CUDA runtime library not found; CUDA kernels skipped")
  return()
endif()
if(CCACHE_PROGRAM)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()
set(DSEC_HAVE_CUDA ON)
message(STATUS "dsec: CUDA ${CMAKE_CUDA_COMPILER_VERSION} for sm "
               "${CMAKE_CUDA_ARCHITECTURES}; building dsec_moe_cuda")
