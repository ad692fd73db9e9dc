# Finds every third-party dependency once, as imported targets.
# All of them come from Debian 12 packages (deploy/install-deps.sh).
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
find_package(Protobuf REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(spdlog CONFIG REQUIRED)
find_package(RocksDB CONFIG REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(ZLIB REQUIRED)
# The module is for Debian's python3 (python3-dev, pybind11-dev,
# python3-pytest), not whatever python3 comes first in PATH.
if(EXISTS /usr/bin/python3)
  set(Python3_EXECUTABLE /usr/bin/python3 CACHE FILEPATH "")
  set(PYTHON_EXECUTABLE /usr/bin/python3 CACHE FILEPATH "")
endif()
find_package(Python3 COMPONENTS Interpreter Development REQUIRED)
find_package(pybind11 CONFIG REQUIRED)
find_package(pugixml CONFIG REQUIRED)
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++>=1.51)
pkg_check_modules(FUSE3 REQUIRED IMPORTED_TARGET fuse3>=3.14)
pkg_check_modules(SECCOMP REQUIRED IMPORTED_TARGET libseccomp>=2.5)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

find_program(DSEC_PROTOC protoc REQUIRED)
find_program(DSEC_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

if(DSEC_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(DSEC_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()
