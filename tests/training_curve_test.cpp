// io/training_curve: the SVG is well-formed XML (checked by a small tag-balance parser here), has
// one polyline per unbroken run of each series with the right points, skips NaN points as gaps,
// labels ticks sensibly, says "no epochs yet" when empty, escapes the title, and is written
// atomically (no temporary file left behind).
#include "io/training_curve.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "io/gzip_stream.h"
#include "tests/test_support.h"

namespace {

namespace fs = std::filesystem;
using namespace voxgrad::io;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::vector<EpochPoint> curve(int n) {
  std::vector<EpochPoint> points;
  for (int e = 0; e < n; ++e)
    points.push_back({e, 1.2 * std::exp(-0.1 * e) - 0.3, 0.1 + 0.8 * (1 - std::exp(-0.2 * e))});
  return points;
}

// Empty when `svg` is well-formed as far as this picture needs: one root <svg> element, every tag
// closed in order, attribute values quoted, text free of raw '<' and of '&' outside entities.
std::string xml_problem(const std::string& svg) {
  std::vector<std::string> open;
  int roots = 0;
  std::size_t i = 0;
  const std::regex entity("^&(amp|lt|gt|quot|apos);");
  while (i < svg.size()) {
    if (svg[i] == '&') {
      if (!std::regex_search(svg.substr(i, 8), entity)) return "bare & at " + std::to_string(i);
      ++i;
      continue;
    }
    if (svg[i] != '<') {
      if (open.empty() && !std::isspace(static_cast<unsigned char>(svg[i]))) return "text outside the root";
      ++i;
      continue;
    }
    const std::size_t end = svg.find('>', i);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(i);
    std::string tag = svg.substr(i + 1, end - i - 1);
    i = end + 1;
    // Quotes must pair up, and no '<' may hide inside a tag.
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return "unbalanced quotes in <" + tag + ">";
    if (tag.find('<') != std::string::npos) return "'<' inside <" + tag + ">";
    if (tag.front() == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) return "</" + name + "> closes nothing open";
      open.pop_back();
      continue;
    }
    const bool self_closing = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (open.empty() && ++roots > 1) return "second root element <" + name + ">";
    if (!self_closing) open.push_back(name);
  }
  if (!open.empty()) return "<" + open.back() + "> never closed";
  if (roots != 1) return "no root element";
  return "";
}

// The `points` attributes of the polylines inside the series group named `series`.
std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& svg, const std::string& series) {
  const std::size_t begin = svg.find("data-name=\"" + series + "\"");
  EXPECT_NE(begin, std::string::npos) << series;
  const std::size_t end = svg.find("</g>", begin);
  const std::string group = svg.substr(begin, end - begin);
  std::vector<std::vector<std::pair<double, double>>> out;
  const std::regex points_attr("<polyline[^>]*points=\"([^\"]*)\"");
  for (std::sregex_iterator it(group.begin(), group.end(), points_attr), stop; it != stop; ++it) {
    std::vector<std::pair<double, double>> line;
    const std::string list = (*it)[1];
    const std::regex pair("(-?[0-9.]+),(-?[0-9.]+)");
    for (std::sregex_iterator p(list.begin(), list.end(), pair); p != stop; ++p)
      line.emplace_back(std::stod((*p)[1]), std::stod((*p)[2]));
    out.push_back(line);
  }
  return out;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t i = text.find(what); i != std::string::npos; i = text.find(what, i + 1)) ++n;
  return n;
}

std::size_t circles_in(const std::string& svg, const std::string& series) {
  const std::size_t begin = svg.find("data-name=\"" + series + "\"");
  return count(svg.substr(begin, svg.find("</g>", begin) - begin), "<circle");
}

TEST(TrainingCurveSvg, WellFormedWithOnePolylinePerSeries) {
  const std::string svg = training_curve_svg(curve(12), "Task09 fold 0");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_NE(svg.find("viewBox=\"0 0 800 520\""), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline"), 2u);
  for (const char* series : {"train loss", "val Dice"}) {
    const auto lines = polylines(svg, series);
    ASSERT_EQ(lines.size(), 1u) << series;
    EXPECT_EQ(lines[0].size(), 12u) << series;
    EXPECT_EQ(circles_in(svg, series), 12u) << series;
    // Epochs left to right at equal spacing; every point inside the canvas.
    for (std::size_t i = 1; i < lines[0].size(); ++i) {
      EXPECT_GT(lines[0][i].first, lines[0][i - 1].first);
      EXPECT_NEAR(lines[0][i].first - lines[0][i - 1].first, lines[0][1].first - lines[0][0].first, 0.11);
    }
    for (const auto& [x, y] : lines[0]) EXPECT_TRUE(x >= 0 && x <= 800 && y >= 0 && y <= 520) << x << "," << y;
  }
  // The falling loss goes down on screen (SVG y grows downwards), the rising Dice goes up.
  const auto loss = polylines(svg, "train loss")[0], dice = polylines(svg, "val Dice")[0];
  EXPECT_GT(loss.back().second, loss.front().second);
  EXPECT_LT(dice.back().second, dice.front().second);
  // The loss panel sits above the Dice panel.
  double lowest_loss = 0, highest_dice = 520;
  for (const auto& p : loss) lowest_loss = std::max(lowest_loss, p.second);
  for (const auto& p : dice) highest_dice = std::min(highest_dice, p.second);
  EXPECT_LT(lowest_loss, highest_dice);
  for (const char* label : {">epoch<", ">train loss<", ">val Dice<", ">Task09 fold 0<"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(TrainingCurveSvg, TickLabelsAreRounded) {
  // Loss from 2.37 down to -0.52: ticks from -1.0 to 2.5 in steps of 0.5 (one decimal); Dice 0 .. 1.
  std::vector<EpochPoint> points = curve(12);
  for (std::size_t i = 0; i < points.size(); ++i) points[i].train_loss = 2.37 - 2.89 * static_cast<double>(i) / 11;
  const std::string svg = training_curve_svg(points, "t");
  for (const char* label : {">-1.0<", ">-0.5<", ">0.0<", ">1.5<", ">2.5<", ">0.2<", ">1.0<"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_EQ(svg.find(">3.0<"), std::string::npos);
  EXPECT_EQ(svg.find(">0.25<"), std::string::npos);
  EXPECT_EQ(svg.find(">-0.0<"), std::string::npos);
  // Epoch ticks are whole numbers: 12 epochs (0 .. 11) in steps of 1 or 2, never "0.5".
  const std::string plain = training_curve_svg(curve(12), "t");
  EXPECT_NE(plain.find(">10<"), std::string::npos);
  EXPECT_EQ(plain.find(">0.5<"), std::string::npos);
  EXPECT_EQ(svg.find("0000000"), std::string::npos);  // no unrounded floating point noise anywhere
  // A large range: thousands of epochs get round tick steps.
  const std::string long_run = training_curve_svg(curve(1000), "t");
  EXPECT_NE(long_run.find(">1000<"), std::string::npos);
  EXPECT_NE(long_run.find(">500<"), std::string::npos);
  EXPECT_EQ(long_run.find(">999<"), std::string::npos);
  EXPECT_EQ(xml_problem(long_run), "");
}

TEST(TrainingCurveSvg, NanPointsLeaveGaps) {
  std::vector<EpochPoint> points = curve(10);
  points[3].val_dice = kNaN;  // validation not run this epoch
  points[4].val_dice = kNaN;
  points[0].train_loss = kNaN;
  points[9].val_dice = std::numeric_limits<double>::infinity();
  const std::string svg = training_curve_svg(points, "gaps");
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  const auto loss = polylines(svg, "train loss");
  ASSERT_EQ(loss.size(), 1u);
  EXPECT_EQ(loss[0].size(), 9u);
  EXPECT_EQ(circles_in(svg, "train loss"), 9u);
  // Dice: epochs 0-2, then 5-8: two pieces, the line broken over the missing epochs.
  const auto dice = polylines(svg, "val Dice");
  ASSERT_EQ(dice.size(), 2u);
  EXPECT_EQ(dice[0].size(), 3u);
  EXPECT_EQ(dice[1].size(), 4u);
  EXPECT_EQ(circles_in(svg, "val Dice"), 7u);

  // No plottable value in a series: no line, and the picture is still well-formed.
  for (EpochPoint& p : points) p.train_loss = kNaN;
  const std::string no_loss = training_curve_svg(points, "no loss");
  EXPECT_EQ(xml_problem(no_loss), "");
  EXPECT_TRUE(polylines(no_loss, "train loss").empty());
  EXPECT_EQ(polylines(no_loss, "val Dice").size(), 2u);
}

TEST(TrainingCurveSvg, UnsortedAndSingleEpochInput) {
  std::vector<EpochPoint> points = curve(5);
  std::swap(points[0], points[4]);
  const auto xs = polylines(training_curve_svg(points, "t"), "train loss")[0];
  for (std::size_t i = 1; i < xs.size(); ++i) EXPECT_GT(xs[i].first, xs[i - 1].first);

  const std::string one = training_curve_svg({{0, 0.5, 0.5}}, "one");
  EXPECT_EQ(xml_problem(one), "");
  EXPECT_EQ(polylines(one, "train loss").at(0).size(), 1u);
  EXPECT_EQ(one.find("nan"), std::string::npos);
}

TEST(TrainingCurveSvg, EmptyInputSaysNoEpochsYet) {
  const std::string svg = training_curve_svg({}, "fresh run");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_NE(svg.find("no epochs yet"), std::string::npos);
  EXPECT_NE(svg.find("fresh run"), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline"), 0u);
}

TEST(TrainingCurveSvg, TitleIsEscaped) {
  const std::string title = "<script>alert(\"x\")</script> & 'Dice' > \x01";
  const std::string svg = training_curve_svg(curve(3), title);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(svg.find("<script>"), std::string::npos);
  EXPECT_NE(svg.find("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &apos;Dice&apos; &gt;"),
            std::string::npos);
  EXPECT_EQ(svg.find('\x01'), std::string::npos);
  EXPECT_EQ(xml_problem(training_curve_svg({}, title)), "");
}

TEST(TrainingCurveSvg, WrittenAtomically) {
  const std::string dir = voxgrad::test::temp_dir("training_curve");
  const std::string path = dir + "/training_curve.svg";
  write_training_curve_svg(path, curve(4), "first");
  EXPECT_EQ(read_file_bytes(path), training_curve_svg(curve(4), "first"));
  // Replacing it leaves the new picture and nothing else in the folder.
  write_training_curve_svg(path, curve(8), "second");
  EXPECT_EQ(read_file_bytes(path), training_curve_svg(curve(8), "second"));
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"training_curve.svg"});
  // A folder that does not exist is an error, not a silent no-op.
  EXPECT_THROW(write_training_curve_svg(dir + "/missing/curve.svg", curve(2), "x"), voxgrad::Error);
}

}  // namespace
