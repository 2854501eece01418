# Golden replay and determinism of moesched-sim compare on a shipped trace.
#   cmake -DSIM=path/to/moesched-sim -DSOURCE_DIR=... -DOUT=dir -DGOLDEN=file [-DUPDATE=ON] -P sim_golden.cmake
# Runs the same comparison with 1 and 2 threads: both JSON files must be byte-identical to each
# other and to the committed golden file (regenerate it with -DUPDATE=ON after an intended change).
set(args compare --trace traces/synthetic/mixtral-sd4.trace.safetensors --gpu rtx4090 --cache-gb 6
         --policies on-demand,lru,lfu,static,oracle,prefetch:synthetic_skip_gate,prefetch:synthetic_draft_gate)
foreach(jobs 1 2)
  execute_process(COMMAND ${SIM} ${args} --jobs ${jobs} --json ${OUT}/golden-${jobs}.json
                  WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "moesched-sim failed (${rc}):\n${out}\n${err}")
  endif()
endforeach()
file(READ ${OUT}/golden-1.json one)
file(READ ${OUT}/golden-2.json two)
if(NOT one STREQUAL two)
  message(FATAL_ERROR "the JSON differs between --jobs 1 and --jobs 2 (${OUT}/golden-1.json, golden-2.json)")
endif()
if(UPDATE)
  file(WRITE ${GOLDEN} "${one}")
  message(STATUS "updated ${GOLDEN}")
  return()
endif()
file(READ ${GOLDEN} golden)
if(NOT one STREQUAL golden)
  message(FATAL_ERROR "the replay differs from the golden file ${GOLDEN}; compare with ${OUT}/golden-1.json "
                      "(if the change is intended, rerun this script with -DUPDATE=ON)")
endif()
