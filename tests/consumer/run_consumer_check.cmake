# Installs the built library into a scratch prefix, then configures, builds and runs
# tests/consumer against it with find_package(sparsecore): what a C++ serving process does.
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "install failed: ${rc}")
endif()
# Only public headers are installed: no detail/ folder, no CUDA front, no internal header.
file(GLOB_RECURSE installed_headers RELATIVE ${WORK_DIR}/prefix ${WORK_DIR}/prefix/*.h)
foreach(h ${installed_headers})
  if(h MATCHES "/detail/|/sparsecore/cuda/|/(pooling_kernels|reactor|update_rules|ps_protocol|input_stream)\\.h$")
    message(FATAL_ERROR "an internal header was installed: ${h}")
  endif()
endforeach()
if(NOT installed_headers MATCHES "sparsecore/ops/embedding_collection\\.h")
  message(FATAL_ERROR "the public headers were not installed: ${installed_headers}")
endif()
# A pip build lays the package out under <prefix>/sparsecore; a plain CMake build under <prefix>.
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${WORK_DIR}/build
  "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix;${WORK_DIR}/prefix/sparsecore"
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${WORK_DIR}/build/sparsecore_consumer ${WORK_DIR}/ckpt ${WORK_DIR}/model
  RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message(STATUS "${out}")
if(rc)
  message(FATAL_ERROR "the consumer failed: ${rc}")
endif()

# The serving example, built the same way, answers requests from the consumer's checkpoint:
# id 1 was trained into the table, id 99 never was and must read as zeros.
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/examples/cpp_serving -B ${WORK_DIR}/serving
  "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix;${WORK_DIR}/prefix/sparsecore" RESULT_VARIABLE rc)
if(NOT rc)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/serving RESULT_VARIABLE rc)
endif()
if(rc)
  message(FATAL_ERROR "building examples/cpp_serving failed: ${rc}")
endif()
file(WRITE ${WORK_DIR}/requests.txt "user 1 2\nuser 99\n")
execute_process(COMMAND ${WORK_DIR}/serving/serve_embeddings ${WORK_DIR}/ckpt
  INPUT_FILE ${WORK_DIR}/requests.txt RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(rc OR NOT out MATCHES "^user [^\n]+\nuser 0 0 0 0\n$")
  message(FATAL_ERROR "serve_embeddings gave unexpected output (rc ${rc})")
endif()

# One bad line (unknown table, an id that is not an integer) is answered in place; the valid
# lines before and after it keep their answers, and the exit status says a line failed.
file(WRITE ${WORK_DIR}/mixed.txt "user 1 2\nnosuch 1\nuser 99\nuser x1\nuser 99\n")
execute_process(COMMAND ${WORK_DIR}/serving/serve_embeddings ${WORK_DIR}/ckpt --batch 8
  INPUT_FILE ${WORK_DIR}/mixed.txt RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(NOT rc EQUAL 1 OR NOT out MATCHES "^user [^\n]+\nerror line 2: [^\n]*unknown table 'nosuch'[^\n]*\nuser 0 0 0 0\nerror line 4: [^\n]*'x1'[^\n]*\nuser 0 0 0 0\n$")
  message(FATAL_ERROR "serve_embeddings did not answer around bad lines (rc ${rc})")
endif()

# --help prints the usage and exits 0; it is not taken as a checkpoint directory.
execute_process(COMMAND ${WORK_DIR}/serving/serve_embeddings --help
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc OR NOT out MATCHES "^usage: [^\n]*CHECKPOINT_DIR" OR err)
  message(FATAL_ERROR "serve_embeddings --help: rc ${rc}, out '${out}', err '${err}'")
endif()
execute_process(COMMAND ${WORK_DIR}/serving/serve_embeddings --bogus ${WORK_DIR}/ckpt
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "unknown option '--bogus'")
  message(FATAL_ERROR "serve_embeddings --bogus: rc ${rc}, err '${err}'")
endif()

# predict_model serves the consumer's model directory: its logits are those the library's
# Predictor gave in the consumer (expected.txt); a bad line is answered in place.
file(READ ${WORK_DIR}/model/expected.txt expected)
file(WRITE ${WORK_DIR}/samples.txt "user:1,2\nuser:99\n\nuser:\n")
execute_process(COMMAND ${WORK_DIR}/serving/predict_model ${WORK_DIR}/model --batch 2
  INPUT_FILE ${WORK_DIR}/samples.txt RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(rc OR NOT out STREQUAL expected)
  message(FATAL_ERROR "predict_model gave '${out}' (rc ${rc}), the Predictor '${expected}'")
endif()
file(WRITE ${WORK_DIR}/bad_samples.txt "user:1,2\nad:3\nuser:x\nuser:99\n")
execute_process(COMMAND ${WORK_DIR}/serving/predict_model ${WORK_DIR}/model
  INPUT_FILE ${WORK_DIR}/bad_samples.txt RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(NOT rc EQUAL 1 OR NOT out MATCHES "^[^\n]+\nerror line 2: unknown feature 'ad'\nerror line 3: [^\n]*'x'[^\n]*\n[^\n]+\n$")
  message(FATAL_ERROR "predict_model did not answer around bad lines (rc ${rc})")
endif()
execute_process(COMMAND ${WORK_DIR}/serving/predict_model ${WORK_DIR}/nothing RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "cannot load")
  message(FATAL_ERROR "predict_model on a missing model: rc ${rc}, err '${err}'")
endif()
