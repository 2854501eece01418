# Runs `TOOL synth -o OUT ARGS...` and fails unless OUT is byte-identical to EXPECTED.
execute_process(COMMAND ${TOOL} synth -o ${OUT} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "synth failed (${rc}): ${out}${err}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${OUT} ${EXPECTED} RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "${OUT} differs from the committed ${EXPECTED}: the generator is no longer deterministic "
                      "or the command in traces/README.md no longer produces the shipped file")
endif()
message(STATUS "reproduced ${EXPECTED} byte for byte")
