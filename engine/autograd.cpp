// The backward pass: order the recorded nodes topologically, run each closure once with the summed
// gradient of its output, and accumulate into leaves. Closures are dropped afterwards, which frees
// the tensors they saved, unless the caller retains the graph.
#include "engine/autograd.h"

#include <unordered_map>
#include <unordered_set>

#include "engine/dispatch.h"
#include "engine/profiler.h"
#include "kernels/elementwise.h"

namespace voxgrad {

namespace {
thread_local bool g_grad_enabled = true;
thread_local LeafReadyHook* g_leaf_ready = nullptr;

// y += x for gradients (same shape, dtype and device), without recording.
void accumulate_into(const Tensor& x, const Tensor& y) {
  detail::dispatch_floating(x,
                            [&]<class T>(auto on) { VG_LAUNCH(on, accumulate, x.data<T>(), y.data<T>(), x.numel()); });
}

void check_gradient(const Tensor& g, const Shape& expected, const std::string& where) {
  VG_CHECK(g.shape() == expected, "backward of '" << where << "' produced a gradient of shape " << shape_str(g.shape())
                                                  << " for an input of shape " << shape_str(expected));
}

// A leaf owns its gradient buffer: the first contribution is copied (it may be shared with other
// inputs or be a view of another tensor), later ones are added in place.
void accumulate_leaf(TensorImpl& leaf, const Tensor& g) {
  if (!leaf.grad.defined()) {
    leaf.grad = g.clone();
  } else {
    accumulate_into(g, leaf.grad);
  }
}

// Nodes reachable from `root`, each before the nodes that produced its inputs.
std::vector<Node*> topological_order(Node* root) {
  std::vector<Node*> post_order;
  std::unordered_set<Node*> visited{root};
  std::vector<std::pair<Node*, std::size_t>> stack{{root, 0}};
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      Node* child = node->inputs[next++].node.get();
      if (child != nullptr && visited.insert(child).second) stack.emplace_back(child, 0);
    } else {
      post_order.push_back(node);
      stack.pop_back();
    }
  }
  return {post_order.rbegin(), post_order.rend()};
}
}  // namespace

bool grad_mode_enabled() { return g_grad_enabled; }

LeafReadyHook::LeafReadyHook(std::function<void(TensorImpl&)> ready)
    : ready_(std::move(ready)), previous_(g_leaf_ready) {
  g_leaf_ready = this;
}
LeafReadyHook::~LeafReadyHook() { g_leaf_ready = previous_; }

NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

Tensor record(const char* name, Tensor out, const std::vector<Tensor>& inputs, BackwardFn backward) {
  if (!g_grad_enabled) return out;
  bool any = false;
  for (const auto& in : inputs) any = any || (in.defined() && in.requires_grad());
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->device = out.device();
  node->inputs.reserve(inputs.size());
  for (const auto& in : inputs) {
    Edge e;
    if (in.defined() && in.requires_grad()) {
      if (in.grad_fn())
        e.node = in.grad_fn();
      else
        e.leaf = in.impl_ptr();
    }
    node->inputs.push_back(std::move(e));
    node->input_shapes.push_back(in.defined() ? in.shape() : Shape{});
  }
  node->backward = std::move(backward);
  out.impl()->grad_fn = std::move(node);
  return out;
}

void set_backward_cost(const Tensor& out, const OpCost& cost) {
  if (out.defined() && out.grad_fn()) out.grad_fn()->backward_cost = cost;
}

void run_backward(const Tensor& root, const Tensor& grad_root, bool retain_graph) {
  VG_CHECK(root.defined() && grad_root.defined(), "backward: undefined tensor");
  VG_CHECK(root.requires_grad(),
           "backward: the tensor does not require a gradient (no input of its computation has "
           "requires_grad set, or it was computed under NoGradGuard)");
  VG_CHECK(
      grad_root.shape() == root.shape() && grad_root.dtype() == root.dtype() && grad_root.device() == root.device(),
      "backward: grad_output " << grad_root.str() << " does not match " << root.str());
  NoGradGuard no_grad;  // backward closures compute with ops but record nothing
  if (root.is_leaf()) {
    accumulate_leaf(*root.impl(), grad_root);
    return;
  }
  const std::vector<Node*> order = topological_order(root.grad_fn().get());
  // Check the whole graph first, so a freed graph fails before any gradient is touched.
  for (Node* node : order) {
    VG_CHECK(!node->released, "backward through a freed graph: the saved tensors of '"
                                  << node->name << "' were released by an earlier backward(); pass "
                                  << "retain_graph=true to the first backward() to run it again");
  }
  // With a LeafReadyHook: how many nodes still to run feed each leaf.
  LeafReadyHook* const hook = g_leaf_ready;
  std::unordered_map<TensorImpl*, int> feeds_left;
  if (hook != nullptr)
    for (Node* node : order)
      for (const Edge& edge : node->inputs)
        if (edge.leaf) ++feeds_left[edge.leaf.get()];
  auto leaves_fed_by = [&](Node* node) {
    if (hook == nullptr) return;
    for (const Edge& edge : node->inputs)
      if (edge.leaf && --feeds_left[edge.leaf.get()] == 0) hook->ready_(*edge.leaf);
  };
  std::unordered_map<Node*, Tensor> pending{{root.grad_fn().get(), grad_root}};
  for (Node* node : order) {
    auto it = pending.find(node);
    if (it == pending.end()) {  // no gradient flowed into this node
      leaves_fed_by(node);
      continue;
    }
    const Tensor grad_out = std::move(it->second);
    pending.erase(it);
    std::vector<Tensor> grads;
    {
      // The name is built only when profiling: a backward pass otherwise allocates nothing for it.
      const std::string scope_name = profiler::enabled() ? node->name + "_backward" : std::string();
      VG_PROFILE_COST(scope_name.c_str(), node->device, node->backward_cost);
      grads = node->backward(grad_out);
    }
    VG_CHECK(grads.size() == node->inputs.size(), "backward of '" << node->name << "' returned " << grads.size()
                                                                  << " gradients for " << node->inputs.size()
                                                                  << " inputs");
    if (!retain_graph) {
      node->backward = nullptr;  // frees the saved tensors
      node->released = true;
    }
    for (std::size_t i = 0; i < grads.size(); ++i) {
      const Edge& edge = node->inputs[i];
      if (!grads[i].defined() || !edge.active()) continue;
      check_gradient(grads[i], node->input_shapes[i], node->name);
      if (edge.node) {
        auto [slot, fresh] = pending.try_emplace(edge.node.get(), grads[i]);
        if (!fresh) {
          // Out of place: the pending tensor may be shared with another input's gradient.
          Tensor sum = slot->second.clone();
          accumulate_into(grads[i], sum);
          slot->second = sum;
        }
      } else {
        accumulate_leaf(*edge.leaf, grads[i]);
      }
    }
    leaves_fed_by(node);
  }
}

}  // namespace voxgrad
