# Writes OUT (a header defining DSA_GIT_COMMIT) from `git rev-parse HEAD` at build time, so `dsa --version`
# names the commit that was built, not the one CMake was configured at. The file is rewritten only when the
# commit changes, so an unchanged checkout recompiles nothing. "unknown" outside a git checkout; "-dirty" when
# tracked files differ from HEAD.
execute_process(COMMAND git -C ${SRC} rev-parse --short=12 HEAD OUTPUT_VARIABLE commit
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR commit STREQUAL "")
  set(commit unknown)
else()
  execute_process(COMMAND git -C ${SRC} diff-index --quiet HEAD -- RESULT_VARIABLE dirty ERROR_QUIET)
  if(NOT dirty EQUAL 0)
    string(APPEND commit "-dirty")
  endif()
endif()
set(text "#pragma once\n#define DSA_GIT_COMMIT \"${commit}\"\n")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT "${old}" STREQUAL "${text}")
  file(WRITE ${OUT} "${text}")
endif()
