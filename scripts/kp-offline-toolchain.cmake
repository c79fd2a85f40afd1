# CMake toolchain file used to build the Kompute Python bindings (PyPI `kp`
# 0.9.0 sdist) fully offline.  Used by scripts/install_vulkan_deps.sh, which
# downloads and extracts the sdist, applies scripts/kp-dispatch-barrier.patch
# and then builds the extracted tree:
#
#   CMAKE_TOOLCHAIN_FILE=$PWD/scripts/kp-offline-toolchain.cmake \
#   KP_PYTHON_EXECUTABLE=/path/to/venv/bin/python \
#       pip wheel --no-deps --no-build-isolation -w <dir> <extracted kp-0.9.0>
#
# kp's setup.py does not forward CMAKE_TOOLCHAIN_FILE itself; CMake (>= 3.21)
# reads it from the environment variable of the same name.  This file is
# included during project() (and again in try_compile sub-projects), i.e.
# before Kompute evaluates its options, so plain CACHE entries act as defaults.
#
# Without this file the build clones Vulkan-Headers, fmt and pybind11 with
# FetchContent (git), which fails on a machine without network access.

# Use the system (Debian libvulkan-dev) headers instead of cloning them.
set(KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER OFF CACHE BOOL "" )
# Use Debian's libfmt-dev instead of cloning fmt 10.1.1.
set(KOMPUTE_OPT_USE_BUILT_IN_FMT OFF CACHE BOOL "")
# Use pybind11 from pip (found through pybind11_DIR below).
set(KOMPUTE_OPT_USE_BUILT_IN_PYBIND11 OFF CACHE BOOL "")
# Nothing to install: setup.py only needs the kp extension module.
set(KOMPUTE_OPT_INSTALL OFF CACHE BOOL "")
# Never touch the network, even if something else asks FetchContent.
set(FETCHCONTENT_FULLY_DISCONNECTED ON CACHE BOOL "")

# kp 0.9.0's setup.py has a missing comma, so it passes
#   -DKOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON-DPYTHON_EXECUTABLE=<python>
# as ONE argument: the version check stays enabled (it runs `vulkaninfo` at
# configure time and fails on machines with no Vulkan device) and
# PYTHON_EXECUTABLE is never set.  Fix both here; the first needs FORCE
# because the command line already created the (garbled) cache entry.
set(KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK ON CACHE BOOL "" FORCE)

# The Python that runs the build (the venv's), so that pybind11's CMake
# config picks the matching interpreter and extension suffix.
if(DEFINED ENV{KP_PYTHON_EXECUTABLE})
  set(_kp_python "$ENV{KP_PYTHON_EXECUTABLE}")
else()
  find_program(_kp_python NAMES python3 python NO_CACHE)
endif()
set(PYTHON_EXECUTABLE "${_kp_python}" CACHE FILEPATH "")

# pybind11 from pip: `python -m pybind11 --cmakedir`.
if(DEFINED ENV{pybind11_DIR})
  set(pybind11_DIR "$ENV{pybind11_DIR}" CACHE PATH "")
elseif(NOT DEFINED pybind11_DIR)
  execute_process(
    COMMAND "${_kp_python}" -m pybind11 --cmakedir
    OUTPUT_VARIABLE _kp_pybind11_dir
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _kp_rc)
  if(_kp_rc EQUAL 0)
    set(pybind11_DIR "${_kp_pybind11_dir}" CACHE PATH "")
  endif()
endif()
