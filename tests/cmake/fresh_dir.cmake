# Empties (or creates) DIR. Run: cmake -DDIR=<path> -P fresh_dir.cmake
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
