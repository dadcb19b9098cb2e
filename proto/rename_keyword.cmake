# Renames the `register` member of protoc-c's generated service struct (see
# proto/CMakeLists.txt). Usage: cmake -DFILE=coordinator.pb-c.h -P this-file
file(READ ${FILE} text)
string(REPLACE "(*register)" "(*register_)" text "${text}")
file(WRITE ${FILE} "${text}")
