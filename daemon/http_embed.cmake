# http_embed.cmake - turn daemon/http_page.html into a C file holding
# ag_http_page[] (NUL-terminated), run by the build whenever the page changes.
# Usage: cmake -DIN=http_page.html -DOUT=http_page.c -P http_embed.cmake
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
if(hex MATCHES "0x[89a-f][0-9a-f],")
  message(FATAL_ERROR "${IN}: keep the page ASCII (use &entities; in HTML, \\u escapes in JS)")
endif()
set(body "/* Generated from daemon/http_page.html by http_embed.cmake; do not edit. */\n")
string(APPEND body "const char ag_http_page[] = {${hex}0x00};\n")
file(WRITE ${OUT}.tmp "${body}")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
