# Writes OUT: a C++ file defining dsa::server::kChatPage as the text of IN (the chat page), so the
# page is served from the binary. Run as `cmake -DIN=... -DOUT=... -P embed.cmake`.
file(READ "${IN}" page)
string(FIND "${page}" ")dsa_page\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )dsa_page\"")
endif()
file(WRITE "${OUT}.tmp" "// Generated from src/server/chat_page.html by src/server/embed.cmake: edit the .html file.
namespace dsa::server {
extern const char kChatPage[];
const char kChatPage[] = R\"dsa_page(${page})dsa_page\";
}  // namespace dsa::server
")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
