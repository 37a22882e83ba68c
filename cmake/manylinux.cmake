# Release wheels that load on old Linux systems (manylinux_2_28: glibc 2.28, RHEL 8 / Debian 10 / Ubuntu 18.10 and
# newer), built on a new one without a manylinux container. TEMPBALANCE_GLIBC_STUBS=<dir> (scripts/build_wheels.sh
# makes it) switches it on; source builds leave it empty and link as usual.
#
# How: a binary asks for the newest version of each glibc symbol that the glibc it was linked against has. The dir
# holds link-only stubs of glibc 2.28 (made by `zig cc -target x86_64-linux-gnu.2.28`, from the ziglang wheel), so
# every reference binds to a version 2.28 has. libstdc++ is linked statically (the system's may be GCC 8's) and
# kept private (--exclude-libs), libgcc_s stays dynamic (GCC_4.2.0 is in every policy). csrc/compat defines the two
# symbols GCC 12's libstdc++.a wants from a newer glibc. scripts/build_wheels.sh checks the result.
set(TEMPBALANCE_GLIBC_STUBS "" CACHE PATH "Directory of glibc link stubs for portable release builds (optional)")

function(tb_manylinux_link target)
  if(NOT TEMPBALANCE_GLIBC_STUBS)
    return()
  endif()
  if(NOT EXISTS "${TEMPBALANCE_GLIBC_STUBS}/libc.so")
    message(FATAL_ERROR "tempbalance: TEMPBALANCE_GLIBC_STUBS=${TEMPBALANCE_GLIBC_STUBS} has no libc.so")
  endif()
  target_sources(${target} PRIVATE "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../csrc/compat/glibc_compat.cpp")
  target_link_options(${target} PRIVATE -static-libstdc++ "-L${TEMPBALANCE_GLIBC_STUBS}"
                      "LINKER:-rpath-link,${TEMPBALANCE_GLIBC_STUBS}" "LINKER:--exclude-libs,ALL")
endfunction()
