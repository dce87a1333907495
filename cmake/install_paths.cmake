# install_paths.cmake - runs inside `cmake --install`, when the real prefix
# is known: writes altgrad.pc, the systemd unit (ExecStart and --config under
# that prefix) and the config file, the last only if none is there yet.
# Variables come from the install(CODE) block of cmake/install.cmake.

# GNUInstallDirs' rule: relative dirs hang off the prefix; /usr keeps its
# configuration in /etc.
function(ag_full_dir out rel)
  if(IS_ABSOLUTE "${rel}")
    set(${out} "${rel}" PARENT_SCOPE)
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${rel}" PARENT_SCOPE)
  endif()
endfunction()

ag_full_dir(_libdir "${AG_LIBDIR}")
ag_full_dir(_includedir "${AG_INCLUDEDIR}")
ag_full_dir(_sbindir "${AG_SBINDIR}")
ag_full_dir(_unitdir "${AG_UNITDIR}")
if(CMAKE_INSTALL_PREFIX MATCHES "^/usr/?$" AND AG_SYSCONFDIR_REL STREQUAL "etc")
  set(_sysconfdir "/etc")
else()
  ag_full_dir(_sysconfdir "${AG_SYSCONFDIR_REL}")
endif()

file(MAKE_DIRECTORY "${AG_STAGE}")

# pkg-config file
set(AG_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(AG_PC_LIBDIR "${_libdir}")
set(AG_PC_INCLUDEDIR "${_includedir}")
string(REPLACE "${CMAKE_INSTALL_PREFIX}/" "\${prefix}/" AG_PC_LIBDIR "${AG_PC_LIBDIR}")
string(REPLACE "${CMAKE_INSTALL_PREFIX}/" "\${prefix}/" AG_PC_INCLUDEDIR "${AG_PC_INCLUDEDIR}")
configure_file("${AG_SRC}/cmake/altgrad.pc.in" "${AG_STAGE}/altgrad.pc" @ONLY)
file(INSTALL DESTINATION "${_libdir}/pkgconfig" TYPE FILE FILES "${AG_STAGE}/altgrad.pc")

if(AG_INSTALL_SYSTEMD)
  # The unit in the source tree names the /usr layout; point it at ours.
  file(READ "${AG_SRC}/systemd/altgradd.service" _unit)
  string(REPLACE "/usr/sbin/altgradd" "${_sbindir}/altgradd" _unit "${_unit}")
  string(REPLACE "/etc/altgrad/altgradd.conf" "${_sysconfdir}/altgrad/altgradd.conf"
         _unit "${_unit}")
  file(WRITE "${AG_STAGE}/altgradd.service" "${_unit}")
  file(INSTALL DESTINATION "${_unitdir}" TYPE FILE FILES "${AG_STAGE}/altgradd.service")

  # Never overwrite an administrator's config.
  if(EXISTS "$ENV{DESTDIR}${_sysconfdir}/altgrad/altgradd.conf")
    message(STATUS "Keeping existing: $ENV{DESTDIR}${_sysconfdir}/altgrad/altgradd.conf")
  else()
    file(INSTALL DESTINATION "${_sysconfdir}/altgrad" TYPE FILE
      FILES "${AG_SRC}/systemd/altgradd.conf")
  endif()
endif()
