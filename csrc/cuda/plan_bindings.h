// Exposes the CUDA pass's host planning (plan.h) through the CPU module `tempbalance._core`, so the batching and
// library search rules are tested on machines without CUDA (tests/test_cuda_build.py).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "plan.h"

namespace tb {

inline void bind_cuda_plan(pybind11::module_& m) {
  namespace py = pybind11;
  using ChunkTuple = std::tuple<int64_t, int64_t, int64_t, int64_t>;
  m.def(
      "cuda_plan_groups",
      [](const std::vector<int64_t>& slices, const std::vector<int64_t>& gram_n, int64_t elem_bytes,
         bool have_batched, int64_t max_elements, int64_t max_bytes) {
        if (slices.size() != gram_n.size()) throw py::value_error("slices and gram_n must have the same length");
        if (elem_bytes <= 0 || max_elements <= 0 || max_bytes <= 0)
          throw py::value_error("elem_bytes, max_elements and max_bytes must be positive");
        py::list out;
        for (const auto& g : cuda_plan::plan_groups(slices, gram_n, elem_bytes, have_batched, max_elements,
                                                    max_bytes)) {
          std::vector<ChunkTuple> chunks;
          for (const auto& c : g.chunks) chunks.emplace_back(c.matrix, c.slice_begin, c.slices, c.position);
          out.append(py::make_tuple(g.n, g.batch, g.batched, chunks));
        }
        return out;
      },
      py::arg("slices"), py::arg("gram_n"), py::arg("elem_bytes"), py::arg("have_batched") = true,
      py::arg("max_elements") = cuda_plan::kBatchedElementLimit, py::arg("max_bytes") = int64_t(1) << 30,
      "How the CUDA core groups Grams for cusolverDnXsyevBatched: [(n, batch, batched, [(matrix, slice_begin, "
      "slices, position)])].");
  m.def("cuda_library_candidates", &cuda_plan::library_candidates, py::arg("lib"), py::arg("cuda_major"),
        py::arg("dirs"), "Where the CUDA core looks for lib<lib>.so.<version>, in order ('noload:' = already loaded).");
  m.def("cuda_library_dependencies", &cuda_plan::library_dependencies, py::arg("lib"),
        "What the CUDA core loads before lib<lib> (from the same places), in order.");
  m.attr("CUDA_BATCHED_ELEMENT_LIMIT") = cuda_plan::kBatchedElementLimit;
}

}  // namespace tb
