// Define-by-run reverse-mode autograd: each recorded op attaches a Node holding its backward
// closure and the edges to its inputs; backward() runs the nodes in reverse topological order.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "profiler.h"
#include "tensor.h"

namespace voxgrad {

// One gradient per input of the op, given the gradient of its output. An undefined Tensor means
// "no gradient for this input" (it needs none, or the op is constant in it).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

// Where an input's gradient goes: into the node that produced it, or into a leaf's grad().
struct Edge {
  std::shared_ptr<Node> node;
  std::shared_ptr<TensorImpl> leaf;
  bool active() const { return node != nullptr || leaf != nullptr; }
};

struct Node {
  std::string name;          // the op, e.g. "mul"; profiler scopes use "<name>_backward"
  std::vector<Edge> inputs;  // one per input of the op
  std::vector<Shape> input_shapes;
  BackwardFn backward;  // holds the saved tensors; released after backward() runs it
  bool released = false;
  Device device;
  OpCost backward_cost;  // the backward's cost model, set by ops that have one (profiling only)
};

bool grad_mode_enabled();

// While alive, ops record nothing (inference, optimizer updates, backward closures).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Records `out` as the result of op `name` applied to `inputs`, when grad mode is on and any
// input requires a gradient. Tensors the closure needs must be captured detached (see saved()).
Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn backward);

// Gives the node that produced `out` (if any) the cost model of its backward pass, which
// --profile sets against the machine's peaks. Ops call it only while profiling.
void set_backward_cost(const Tensor& out, const OpCost& cost);

// A tensor as a backward closure keeps it: the data without the history, so that a node never
// owns its own output (no reference cycles).
inline Tensor saved(const Tensor& t) { return t.defined() ? t.detach() : t; }

// While alive (on this thread), run_backward calls `ready` with each leaf that requires a gradient
// as soon as the last node feeding it has run, so its grad() is final for this pass while the pass
// goes on: a data-parallel reducer starts sending it then. A leaf whose nodes all received no
// gradient is reported too (its grad() may then be undefined); leaves outside the graph are not.
class LeafReadyHook {
 public:
  explicit LeafReadyHook(std::function<void(TensorImpl& leaf)> ready);
  ~LeafReadyHook();
  LeafReadyHook(const LeafReadyHook&) = delete;
  LeafReadyHook& operator=(const LeafReadyHook&) = delete;

 private:
  friend void run_backward(const Tensor& root, const Tensor& grad_root, bool retain_graph);
  std::function<void(TensorImpl&)> ready_;
  LeafReadyHook* previous_;
};

// Runs backward from `root` seeded with `grad_root`.
void run_backward(const Tensor& root, const Tensor& grad_root, bool retain_graph);

}  // namespace voxgrad
