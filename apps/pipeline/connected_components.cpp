// Two-pass connected-component labelling: the first raster pass gives each voxel the provisional
// id of an earlier neighbour of its value (or a new one) and records which ids meet in a union-find
// forest whose roots are always the smallest id of their set; the second pass replaces every id by
// its root's final number. A component's smallest provisional id is the one its first voxel got, so
// final ids follow the components' first voxels in raster order.
#include "apps/pipeline/connected_components.h"

#include <limits>

#include "engine/error.h"

namespace voxgrad::pipeline {

namespace {

struct Offset {
  int dz, dy, dx;
};

// The neighbours a raster scan has already visited (half of the full neighbourhood: every other
// pair of touching voxels is seen from its later voxel).
std::vector<Offset> earlier_neighbours(Connectivity connectivity) {
  const int max_nonzero = connectivity == Connectivity::kFaces ? 1 : connectivity == Connectivity::kFacesEdges ? 2 : 3;
  std::vector<Offset> out;
  for (int dz = -1; dz <= 0; ++dz)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const bool earlier = dz < 0 || dy < 0 || (dy == 0 && dx < 0);
        if (earlier && (dz != 0) + (dy != 0) + (dx != 0) <= max_nonzero) out.push_back({dz, dy, dx});
      }
  return out;
}

std::int32_t find_root(std::vector<std::int32_t>& parent, std::int32_t a) {
  while (parent[a] != a) {
    parent[a] = parent[parent[a]];  // path halving keeps later finds short
    a = parent[a];
  }
  return a;
}

}  // namespace

ComponentLabels label_components(const std::int32_t* labels, const std::array<std::int64_t, 3>& shape,
                                 Connectivity connectivity) {
  const auto [nz, ny, nx] = shape;
  VG_CHECK(nz >= 0 && ny >= 0 && nx >= 0, "label_components: negative shape");
  const std::int64_t n = nz * ny * nx;
  VG_CHECK(n < std::numeric_limits<std::int32_t>::max(), "label_components: " << n << " voxels do not fit int32 ids");
  const std::vector<Offset> neighbours = earlier_neighbours(connectivity);

  ComponentLabels out;
  out.id.assign(static_cast<std::size_t>(n), 0);
  std::vector<std::int32_t> parent{0};  // provisional ids start at 1; 0 is the background
  std::vector<std::int32_t> provisional_value{0};
  for (std::int64_t z = 0; z < nz; ++z)
    for (std::int64_t y = 0; y < ny; ++y)
      for (std::int64_t x = 0; x < nx; ++x) {
        const std::int64_t i = (z * ny + y) * nx + x;
        const std::int32_t v = labels[i];
        if (v <= 0) continue;
        std::int32_t mine = 0;
        for (const Offset& o : neighbours) {
          const std::int64_t zz = z + o.dz, yy = y + o.dy, xx = x + o.dx;
          if (zz < 0 || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
          const std::int64_t j = (zz * ny + yy) * nx + xx;
          if (labels[j] != v) continue;
          const std::int32_t theirs = out.id[static_cast<std::size_t>(j)];
          if (mine == 0) {
            mine = theirs;
            continue;
          }
          const std::int32_t a = find_root(parent, mine), b = find_root(parent, theirs);
          if (a < b) parent[b] = a;
          if (b < a) parent[a] = b;
        }
        if (mine == 0) {
          mine = static_cast<std::int32_t>(parent.size());
          parent.push_back(mine);
          provisional_value.push_back(v);
        }
        out.id[static_cast<std::size_t>(i)] = mine;
      }

  // Roots numbered in the order they were made; every other id takes its root's number.
  std::vector<std::int32_t> final_id(parent.size(), 0);
  for (std::size_t p = 1; p < parent.size(); ++p) {
    const std::int32_t root = find_root(parent, static_cast<std::int32_t>(p));
    if (root == static_cast<std::int32_t>(p)) {
      out.value.push_back(provisional_value[p]);
      final_id[p] = out.count();
    } else {
      final_id[p] = final_id[root];  // root < p, numbered already
    }
  }
  for (std::int32_t& id : out.id) id = final_id[id];
  return out;
}

std::vector<ReferenceComponent> reference_components(const std::int32_t* ref, const std::int32_t* pred,
                                                     const std::array<std::int64_t, 3>& shape,
                                                     Connectivity connectivity, std::int64_t volumes) {
  const std::int64_t block = shape[0] * shape[1] * shape[2];
  std::vector<ReferenceComponent> out;
  for (std::int64_t b = 0; b < volumes; ++b) {
    const std::int64_t start = b * block;
    const ComponentLabels labels = label_components(ref + start, shape, connectivity);
    const std::size_t first = out.size();
    out.resize(first + static_cast<std::size_t>(labels.count()));
    for (std::int32_t c = 0; c < labels.count(); ++c) out[first + c].value = labels.value[c];
    std::vector<bool> seen(static_cast<std::size_t>(labels.count()), false);
    for (std::int64_t i = 0; i < block; ++i) {
      const std::int32_t id = labels.id[static_cast<std::size_t>(i)];
      if (id == 0) continue;
      ReferenceComponent& c = out[first + id - 1];
      if (!seen[id - 1]) {
        seen[id - 1] = true;
        c.first_voxel = start + i;
      }
      c.voxels += 1;
      c.overlap += pred[start + i] == c.value;
    }
  }
  return out;
}

}  // namespace voxgrad::pipeline
