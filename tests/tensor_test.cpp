// Tensor basics: shapes and dtypes, creation, host round trips, device transfers, casts, views,
// and the counter-based generator's reproducibility on both devices.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/allocator.h"
#include "engine/ops.h"
#include "tests/test_support.h"

namespace voxgrad {
namespace {

TEST(Tensor, ShapeAccessors) {
  Tensor t = zeros({2, 3, 4, 5, 6});
  EXPECT_EQ(t.dim(), 5);
  EXPECT_EQ(t.numel(), 720);
  EXPECT_EQ(t.size(1), 3);
  EXPECT_EQ(t.size(-1), 6);
  EXPECT_EQ(t.nbytes(), 720u * 4);
  EXPECT_EQ(t.dtype(), DType::Float32);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_EQ(shape_str(t.shape()), "(2, 3, 4, 5, 6)");
  EXPECT_THROW(t.size(5), Error);
  EXPECT_EQ(t.str(), "Tensor(float32, cpu, (2, 3, 4, 5, 6))");
}

TEST(Tensor, SevenAxesAtMost) {
  EXPECT_NO_THROW(zeros({1, 2, 1, 2, 1, 2, 1}));
  EXPECT_THROW(zeros({1, 1, 1, 1, 1, 1, 1, 1}), Error);
  EXPECT_THROW(zeros({2, -1}), Error);
}

TEST(Tensor, CreationFillsValues) {
  EXPECT_EQ(ones({3}).to_vector<float>(), (std::vector<float>{1, 1, 1}));
  EXPECT_EQ(full({2}, 2.5, DType::Float64).to_vector<double>(), (std::vector<double>{2.5, 2.5}));
  EXPECT_EQ(full({2}, 7, DType::Int32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{7, 7}));
  EXPECT_EQ(zeros({2}, DType::UInt8).to_vector<std::uint8_t>(), (std::vector<std::uint8_t>{0, 0}));
  EXPECT_EQ(arange(0, 5).to_vector<float>(), (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_EQ(arange(1, 2, 0.25, DType::Float64).to_vector<double>(), (std::vector<double>{1, 1.25, 1.5, 1.75}));
  EXPECT_EQ(arange(3, 0, -1, DType::Int32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{3, 2, 1}));
  EXPECT_EQ(arange(0, 0).numel(), 0);
  EXPECT_EQ(zeros({}).numel(), 1);
}

TEST(Tensor, HostRoundTripAndItem) {
  const std::vector<double> v{1.5, -2, 3.25, 4, 5, 6};
  Tensor t = from_vector(v, {2, 3});
  EXPECT_EQ(t.to_vector<double>(), v);
  EXPECT_THROW(t.to_vector<float>(), Error);
  EXPECT_THROW(from_vector(v, {4}), Error);
  EXPECT_DOUBLE_EQ(from_vector(std::vector<float>{0.5f}, {1}).item(), 0.5);
  EXPECT_THROW(t.item(), Error);
}

TEST(Tensor, CastsBetweenDtypes) {
  Tensor f = from_vector(std::vector<float>{0.0f, 1.9f, -2.5f, 255.0f}, {4});
  EXPECT_EQ(f.to(DType::Int32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 1, -2, 255}));
  EXPECT_EQ(f.to(DType::Float64).to_vector<double>(), (std::vector<double>{0.0, double(1.9f), -2.5, 255.0}));
  Tensor labels = from_vector(std::vector<std::uint8_t>{0, 3, 250}, {3});
  EXPECT_EQ(labels.to(DType::Float32).to_vector<float>(), (std::vector<float>{0, 3, 250}));
}

TEST(Tensor, CloneCopiesAndDetachShares) {
  Tensor a = from_vector(std::vector<float>{1, 2, 3}, {3});
  Tensor c = a.clone();
  Tensor d = a.detach();
  a.copy_(from_vector(std::vector<float>{7, 8, 9}, {3}));
  EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(d.to_vector<float>(), (std::vector<float>{7, 8, 9}));
  EXPECT_THROW(a.copy_(zeros({4})), Error);
}

TEST(Tensor, StorageIsRefcounted) {
  const auto before = host_allocator_stats().bytes_in_use;
  {
    Tensor a = zeros({1000});
    Tensor view = reshape(a, {10, 100});
    a = Tensor();
    EXPECT_GE(host_allocator_stats().bytes_in_use, before + 4000);  // still held by the view
  }
  EXPECT_EQ(host_allocator_stats().bytes_in_use, before);
}

TEST(Generator, SameSeedSameNumbersAndOffsetsAdvance) {
  Generator g1(42), g2(42);
  const auto a = rand({1000}, g1).to_vector<float>();
  const auto b = rand({1000}, g2).to_vector<float>();
  EXPECT_EQ(a, b);
  const auto c = rand({1000}, g1).to_vector<float>();
  EXPECT_NE(a, c);  // the second draw continues the stream
  for (float v : a) {
    EXPECT_GT(v, 0.0f);
    EXPECT_LE(v, 1.0f);
  }
  Generator g3(42);
  g3.set_offset(g1.offset());
  EXPECT_EQ(rand({10}, g3).to_vector<float>(), rand({10}, g1).to_vector<float>());
}

TEST(Generator, NormalMomentsAndRange) {
  Generator g(7);
  const auto v = randn({200000}, g, DType::Float64).to_vector<double>();
  double mean = 0, var = 0;
  for (double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  for (double x : v) var += (x - mean) * (x - mean);
  var /= static_cast<double>(v.size());
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(var, 1.0, 0.02);
  const auto u = rand({10}, g, DType::Float32, Device::cpu(), -3, -1).to_vector<float>();
  for (float x : u) {
    EXPECT_GT(x, -3.0f);
    EXPECT_LE(x, -1.0f);
  }
}

TEST(Tensor, CudaTransfersRoundTrip) {
  VG_REQUIRE_CUDA();
  const std::vector<float> v{1, 2, 3, 4, 5, 6};
  Tensor g = from_vector(v, {2, 3}, Device::cuda());
  EXPECT_EQ(g.device(), Device::cuda());
  EXPECT_EQ(g.to_vector<float>(), v);
  EXPECT_EQ(g.cpu().to_vector<float>(), v);
  EXPECT_EQ(g.clone().to(Device::cpu()).to_vector<float>(), v);
  EXPECT_EQ(g.to(DType::Int32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(full({3}, 4, DType::UInt8, Device::cuda()).to_vector<std::uint8_t>(), (std::vector<std::uint8_t>{4, 4, 4}));
  EXPECT_EQ(arange(0, 4, 1, DType::Float32, Device::cuda()).to_vector<float>(), (std::vector<float>{0, 1, 2, 3}));
  EXPECT_THROW(zeros({2}, DType::Float64, Device::cuda()), Error);
}

TEST(Generator, CudaGivesTheCpuNumbers) {
  VG_REQUIRE_CUDA();
  Generator a(123), b(123);
  EXPECT_EQ(rand({4099}, a, DType::Float32, Device::cuda()).to_vector<float>(), rand({4099}, b).to_vector<float>());
  const auto gn = randn({4099}, a, DType::Float32, Device::cuda()).to_vector<float>();
  const auto cn = randn({4099}, b).to_vector<float>();
  ASSERT_EQ(gn.size(), cn.size());
  for (std::size_t i = 0; i < gn.size(); ++i) EXPECT_NEAR(gn[i], cn[i], 1e-6 * (1 + std::fabs(cn[i]))) << i;
}

}  // namespace
}  // namespace voxgrad
