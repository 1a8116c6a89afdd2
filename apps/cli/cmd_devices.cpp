// `voxgrad devices`: what this binary can compute on, as one JSON line. It initialises CUDA on
// purpose (that is its job); tools/gpu-check relies on it to catch a silent fall-back to the CPU.
#include <CLI/CLI.hpp>
#include <iostream>

#include "apps/cli/cli.h"
#include "engine/device.h"
#include "engine/json.h"

namespace voxgrad::cli {

Command devices_command() {
  return {"devices", "List the CUDA devices this binary can use (JSON on stdout)", [](CLI::App&) -> RunFn {
            return [](const GlobalOptions&) {
              const int count = cuda_device_count();
              Json devices = Json::array();
              for (int i = 0; i < count; ++i) devices.push_back({{"index", i}, {"name", cuda_device_name(i)}});
              Json result = {
                  {"built_with_cuda", built_with_cuda()},
                  {"cuda_devices", count},
                  {"reason", count > 0 ? Json(nullptr) : Json(cuda_unavailable_reason())},
                  {"devices", devices},
              };
              write_json_line(std::cout, result);
              return kExitOk;
            };
          }};
}

}  // namespace voxgrad::cli
