# Determinism across processes and thread counts: the same sweep (predictive policies included)
# run in separate processes with --jobs 1 and --jobs 2 writes byte-identical CSV and JSON.
#   cmake -DSIM=path/to/moesched-sim -DSOURCE_DIR=... -DOUT=dir -P sim_deterministic.cmake
set(args sweep --trace traces/real/mix-prose-sd4.trace.safetensors --gpu rtx4090 --cache-gb 0.1,0.15
         --policies lru,oracle,prefetch:draft_gate,prefetch:mlp_stride2 --cpu-workers 2)
foreach(jobs 1 2)
  execute_process(COMMAND ${SIM} ${args} --jobs ${jobs} --csv ${OUT}/det-${jobs}.csv --json ${OUT}/det-${jobs}.json
                  WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "moesched-sim failed (${rc}):\n${out}\n${err}")
  endif()
endforeach()
foreach(ext csv json)
  file(READ ${OUT}/det-1.${ext} one)
  file(READ ${OUT}/det-2.${ext} two)
  if(NOT one STREQUAL two)
    message(FATAL_ERROR "the sweep's ${ext} differs between two processes with --jobs 1 and 2 (${OUT}/det-1.${ext}, det-2.${ext})")
  endif()
  string(LENGTH "${one}" n)
  if(n LESS 200)
    message(FATAL_ERROR "the sweep's ${ext} is nearly empty (${n} bytes)")
  endif()
endforeach()
