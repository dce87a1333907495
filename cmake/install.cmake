# install.cmake - what `cmake --install` puts where (GNUInstallDirs layout):
# altgradd in sbin, the altgrad CLI in bin, libaltgrad (shared with SONAME,
# and static), the public header, altgrad.pc, the CMake package exporting
# altgrad::altgrad, the systemd unit and snippets, the example config, the man
# pages and the docs. Included by the top-level CMakeLists.txt.
include(CMakePackageConfigHelpers)

set(AG_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
  "systemd system unit folder, relative to the prefix unless absolute")
set(AG_SYSUSERSDIR "lib/sysusers.d" CACHE STRING
  "sysusers.d folder, relative to the prefix unless absolute")
option(AG_INSTALL_SYSTEMD "Install the systemd unit, sysusers.d snippet and example config" ON)
option(AG_INSTALL_MAN "Generate and install the man pages" ON)

set(AG_CMAKE_PACKAGE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/altgrad)

# --- libraries and header -------------------------------------------------
install(TARGETS altgrad EXPORT altgradTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
    NAMELINK_COMPONENT dev
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS altgrad_static EXPORT altgradStaticTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${AG_INCLUDE_DIR}/altgrad DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  COMPONENT dev FILES_MATCHING PATTERN "*.h")

install(EXPORT altgradTargets NAMESPACE altgrad:: DESTINATION ${AG_CMAKE_PACKAGE_DIR}
  COMPONENT dev)
install(EXPORT altgradStaticTargets NAMESPACE altgrad:: DESTINATION ${AG_CMAKE_PACKAGE_DIR}
  COMPONENT dev)

# The static library's link interface names these CMake packages' targets;
# the config file finds them before loading altgradStaticTargets.cmake.
set(AG_STATIC_CMAKE_DEPS "")
set(AG_PC_LIBS_PRIVATE "-lm")
if(TARGET ag_proto)
  list(APPEND AG_STATIC_CMAKE_DEPS msgpack)
  set(AG_PC_LIBS_PRIVATE "-lmsgpackc ${AG_PC_LIBS_PRIVATE}")
endif()
if(TARGET ag_client_objs)
  set(AG_PC_LIBS_PRIVATE "-lmbedtls -lmbedx509 -lmbedcrypto -pthread -latomic ${AG_PC_LIBS_PRIVATE}")
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/altgradConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/altgradConfig.cmake
  INSTALL_DESTINATION ${AG_CMAKE_PACKAGE_DIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/altgradConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/altgradConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/altgradConfigVersion.cmake
  DESTINATION ${AG_CMAKE_PACKAGE_DIR} COMPONENT dev)

# --- programs (defined by daemon/ and client/; either may be absent) ------
if(TARGET altgradd)
  install(TARGETS altgradd RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR} COMPONENT runtime)
endif()
# The sqlite3 shell's `results` (docs/store.md, "Result segments"):
# `.load /usr/lib/.../altgrad/libaltgrad_sqlite`.
if(TARGET altgrad_sqlite)
  install(TARGETS altgrad_sqlite LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/altgrad
          COMPONENT runtime)
endif()
# The CLI executable cannot be a target named `altgrad` (that is the
# library); accept the names the client team may have given it.
foreach(_ag_cli altgrad_cli altgrad-cli)
  if(TARGET ${_ag_cli})
    get_target_property(_ag_type ${_ag_cli} TYPE)
    if(_ag_type STREQUAL "EXECUTABLE")
      install(TARGETS ${_ag_cli} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
    endif()
  endif()
endforeach()

# --- man pages: docs/man/*.md -> roff by scripts/mkman.sh -----------------
if(AG_INSTALL_MAN)
  set(_ag_man_out "")
  foreach(_ag_page altgradd.8 altgrad.1 libaltgrad.3)
    set(_ag_src ${CMAKE_SOURCE_DIR}/docs/man/${_ag_page}.md)
    if(EXISTS ${_ag_src})
      set(_ag_out ${CMAKE_BINARY_DIR}/man/${_ag_page})
      add_custom_command(OUTPUT ${_ag_out}
        COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
        COMMAND sh ${CMAKE_SOURCE_DIR}/scripts/mkman.sh ${_ag_src} ${_ag_out}
                ${PROJECT_VERSION}
        DEPENDS ${_ag_src} ${CMAKE_SOURCE_DIR}/scripts/mkman.sh
        COMMENT "Generating man page ${_ag_page}" VERBATIM)
      list(APPEND _ag_man_out ${_ag_out})
      string(REGEX REPLACE ".*\\.([0-9])$" "\\1" _ag_sec ${_ag_page})
      install(FILES ${_ag_out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${_ag_sec}
        COMPONENT doc)
    endif()
  endforeach()
  add_custom_target(ag_man ALL DEPENDS ${_ag_man_out})
endif()

# --- docs -----------------------------------------------------------------
foreach(_ag_doc README.md docs/service.md docs/linking.md docs/cli.md docs/daemon.md
                docs/python.md docs/numerics.md docs/store.md proto/PROTOCOL.md)
  if(EXISTS ${CMAKE_SOURCE_DIR}/${_ag_doc})
    install(FILES ${CMAKE_SOURCE_DIR}/${_ag_doc} DESTINATION ${CMAKE_INSTALL_DOCDIR}
      COMPONENT doc)
  endif()
endforeach()

# --- systemd, config, pkg-config: generated at install time ---------------
# Paths inside these files (ExecStart, the config path, the .pc prefix) must
# name the prefix the files are installed under, which `cmake --install
# --prefix P` decides only at install time; cmake/install_paths.cmake runs
# then and writes them.
if(AG_INSTALL_SYSTEMD)
  install(FILES ${CMAKE_SOURCE_DIR}/systemd/sysusers.d/altgrad.conf
    DESTINATION ${AG_SYSUSERSDIR} COMPONENT runtime)
  install(FILES ${CMAKE_SOURCE_DIR}/systemd/altgradd.conf
    DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples COMPONENT doc)
endif()
install(CODE "
  set(AG_SRC \"${CMAKE_SOURCE_DIR}\")
  set(AG_STAGE \"${CMAKE_BINARY_DIR}/install-stage\")
  set(AG_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
  set(AG_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(AG_SBINDIR \"${CMAKE_INSTALL_SBINDIR}\")
  set(AG_SYSCONFDIR_REL \"${CMAKE_INSTALL_SYSCONFDIR}\")
  set(AG_UNITDIR \"${AG_SYSTEMD_UNITDIR}\")
  set(AG_INSTALL_SYSTEMD \"${AG_INSTALL_SYSTEMD}\")
  set(PROJECT_VERSION \"${PROJECT_VERSION}\")
  set(AG_PC_LIBS_PRIVATE \"${AG_PC_LIBS_PRIVATE}\")
  include(\"${CMAKE_CURRENT_LIST_DIR}/install_paths.cmake\")
")
