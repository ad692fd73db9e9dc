# Small helpers every folder uses, so each CMakeLists.txt stays a few lines.
#
#   dsec_library(NAME SRCS a.cc b.cc DEPS x y [PUBLIC_DEPS z])
#   dsec_binary(NAME SRCS main.cc DEPS x)
#   dsec_test(NAME SRCS foo_test.cc DEPS x [LABELS root] [TIMEOUT s])
#   dsec_bench(NAME SRCS foo_bench.cc DEPS x)

set(DSEC_WARNING_FLAGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
if(DSEC_WERROR)
  list(APPEND DSEC_WARNING_FLAGS -Werror)
endif()

set(DSEC_SANITIZER_FLAGS "")
if(DSEC_ASAN)
  list(APPEND DSEC_SANITIZER_FLAGS -fsanitize=address -fno-omit-frame-pointer)
endif()
if(DSEC_UBSAN)
  list(APPEND DSEC_SANITIZER_FLAGS -fsanitize=undefined -fno-sanitize-recover=undefined)
endif()

function(_dsec_common_target_setup target)
  target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:${DSEC_WARNING_FLAGS}>
      ${DSEC_SANITIZER_FLAGS})
  target_link_options(${target} PRIVATE ${DSEC_SANITIZER_FLAGS})
  target_include_directories(${target} PUBLIC
      $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
      $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}>)
endfunction()

function(dsec_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS;PUBLIC_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SRCS})
  _dsec_common_target_setup(${name})
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC_DEPS} ${ARG_DEPS})
endfunction()

function(dsec_binary name)
  cmake_parse_arguments(ARG "" "OUTPUT_NAME" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  _dsec_common_target_setup(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  if(ARG_OUTPUT_NAME)
    set_target_properties(${name} PROPERTIES OUTPUT_NAME ${ARG_OUTPUT_NAME})
  endif()
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

# Tests run from the build tree with DSEC_BIN_DIR pointing at the binaries.
# LABELS: "root" for tests that need root, namespaces, cgroups or /dev/fuse.
function(dsec_test name)
  if(NOT DSEC_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  _dsec_common_target_setup(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} dsec_testing GTest::gtest GTest::gmock GTest::gtest_main)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES
      TIMEOUT ${ARG_TIMEOUT}
      ENVIRONMENT "DSEC_BIN_DIR=${PROJECT_BINARY_DIR}/bin;DSEC_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()

function(dsec_bench name)
  if(NOT DSEC_BUILD_BENCH)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  _dsec_common_target_setup(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} benchmark::benchmark)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
endfunction()

# Generates C++ (and gRPC) code for .proto files under proto/ into one library.
#   dsec_proto_library(NAME PROTOS dsec/v1/a.proto ... [GRPC])
function(dsec_proto_library name)
  cmake_parse_arguments(ARG "GRPC" "" "PROTOS;DEPS" ${ARGN})
  set(out_dir ${PROJECT_BINARY_DIR}/proto_gen)
  file(MAKE_DIRECTORY ${out_dir})
  set(srcs "")
  set(all_protos "")
  foreach(proto ${ARG_PROTOS})
    list(APPEND all_protos ${CMAKE_CURRENT_SOURCE_DIR}/${proto})
  endforeach()
  foreach(proto ${ARG_PROTOS})
    get_filename_component(dir ${proto} DIRECTORY)
    get_filename_component(base ${proto} NAME_WE)
    set(gen ${out_dir}/${dir}/${base}.pb.cc ${out_dir}/${dir}/${base}.pb.h)
    set(plugin_args "")
    if(ARG_GRPC)
      list(APPEND gen ${out_dir}/${dir}/${base}.grpc.pb.cc ${out_dir}/${dir}/${base}.grpc.pb.h)
      set(plugin_args --grpc_out=${out_dir} --plugin=protoc-gen-grpc=${DSEC_GRPC_CPP_PLUGIN})
    endif()
    add_custom_command(
        OUTPUT ${gen}
        COMMAND ${DSEC_PROTOC} -I${CMAKE_CURRENT_SOURCE_DIR} --cpp_out=${out_dir} ${plugin_args}
                ${CMAKE_CURRENT_SOURCE_DIR}/${proto}
        DEPENDS ${all_protos} ${DSEC_PROTOC}
        COMMENT "protoc ${proto}"
        VERBATIM)
    list(APPEND srcs ${gen})
  endforeach()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} SYSTEM PUBLIC ${out_dir})
  target_link_libraries(${name} PUBLIC protobuf::libprotobuf PkgConfig::GRPCPP ${ARG_DEPS})
endfunction()
