# Policy components: predictors, the prefetch queue, the predictive policies over them, the
# latency model and the cutoff solver.
moesched_add_test(NAME test_policy LABEL policy LIBS moesched::moesched SOURCES
  policy/test_predictors.cpp policy/test_prefetch_queue.cpp policy/test_predictive.cpp policy/test_cutoff.cpp
  policy/test_components.cpp policy/test_published.cpp)
# the policy registry of moesched-sim (an application header, not the library's)
target_include_directories(test_policy PRIVATE ${PROJECT_SOURCE_DIR}/sim/src)

if(COMMAND moesched_tool_test AND TARGET moesched-sim)
  set(_policy_traces ${PROJECT_SOURCE_DIR}/traces/real)
  # routing-only predictive policies run on a plain real trace (no prediction channel needed)
  moesched_tool_test(sim_predictive_policies RC 0 TOOL moesched-sim
    ARGS compare --trace ${_policy_traces}/mix-code-plain.trace.safetensors --cache-gb 0.15
         --policies lru,predict:popularity,predict:transition,moe-infinity
    STDOUT "\nlru +[0-9.]+[^\n]*\npredict:popularity +[0-9.]+[^\n]*\npredict:transition +[0-9.]+[^\n]*\nmoe-infinity +[0-9.]+[^\n]*\nlower-bound")
  # and on an SD replay re-cut from it (--gamma): routing-only predictors need no recorded channel
  moesched_tool_test(sim_predictive_sd_replay RC 0 TOOL moesched-sim
    ARGS compare --trace ${_policy_traces}/mix-code-plain.trace.safetensors --cache-gb 0.15 --gamma 4 --acceptance 0.6
         --policies predict:transition,moe-infinity --horizon 1 --train-trace ${_policy_traces}/mix-prose-plain.trace.safetensors
    STDOUT "\npredict:transition +[0-9.]+[^\n]*\nmoe-infinity +[0-9.]+[^\n]*\nlower-bound")
  # the published policies by name, with options; each row says which predictor ran (a trace
  # channel when the front end hands its table over, else "fallback transition")
  moesched_tool_test(sim_published_policies RC 0 TOOL moesched-sim
    ARGS compare --trace ${_policy_traces}/mix-prose-sd4.trace.safetensors --cache-gb 0.15
         --policies lru,mixtral-offloading,promoe:stride=1:preempt=off,spmoe:cutoff=closed,moesched
    STDOUT "\nlru +[0-9.]+[^\n]*\nmixtral-offloading [[][a-z_ ]+[]] +[0-9.]+[^\n]*\npromoe:stride=1:preempt=off [[][a-z_0-9 ]+[]] +[0-9.]+[^\n]*\nspmoe:cutoff=closed [[][a-z_ ]+[]] +[0-9.]+[^\n]*\nmoesched [[][a-z_ ]+[]] +[0-9.]+[^\n]*\nlower-bound")
  moesched_tool_test(sim_published_bad_option RC 2 TOOL moesched-sim
    ARGS compare --trace ${_policy_traces}/mix-code-plain.trace.safetensors --policies lru,promoe:strid=1
    STDERR "field 'policies' = promoe:strid=1: unknown option 'strid'; promoe takes predictor=")
  moesched_tool_test(sim_published_help RC 0 TOOL moesched-sim ARGS compare --help
    STDOUT "mixtral-offloading: Mixtral-offloading.*promoe: ProMoE[^\n]*Options [(]promoe:key=value:[.][.][.][)]: predictor=auto.*spmoe: SP-MoE.*moesched: moesched")
  moesched_tool_test(sim_predictive_help RC 0 TOOL moesched-sim ARGS compare --help
    STDOUT "--horizon UINT[= []+2.*--train-trace.*Routing-only predictors [(]any trace[)]: predict:popularity, predict:transition, moe-infinity")
endif()
