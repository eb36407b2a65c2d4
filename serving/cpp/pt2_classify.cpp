// Classify digits with the AOTInductor package (model.pt2) from C++, without Python.
//
// Usage: pt2_classify <model.pt2> <images.txt>
//   images.txt: "N H W" on the first line, then N*H*W raw pixel values (float, whitespace-separated),
//   e.g. written by numpy.savetxt. Prints one predicted class per image, one per line.
// Built against the torch wheel's own headers and libtorch: `make cpp-loader`.

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdint>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

// images (N, H, W) float32, as the serving signature takes them (normalisation is inside the model).
at::Tensor read_images(const char* path) {
  std::ifstream input(path);
  int64_t count = 0, height = 0, width = 0;
  if (!(input >> count >> height >> width) || count <= 0 || height <= 0 || width <= 0) {
    throw std::runtime_error(std::string(path) + " does not start with a positive 'N H W' line");
  }
  std::vector<float> pixels(static_cast<size_t>(count * height * width));
  for (float& pixel : pixels) {
    if (!(input >> pixel)) {
      throw std::runtime_error(std::string(path) + " holds fewer pixel values than N*H*W");
    }
  }
  return at::from_blob(pixels.data(), {count, height, width}, at::kFloat).clone();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " <model.pt2> <images.txt>\n";
    return 2;
  }
  try {
    at::Tensor images = read_images(argv[2]);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    // Outputs in the exported program's order: probabilities (N, C) float32, classes (N,) int64.
    std::vector<at::Tensor> outputs = loader.run({images});
    at::Tensor classes = outputs.at(1).contiguous();
    const int64_t* values = classes.data_ptr<int64_t>();
    for (int64_t index = 0; index < classes.numel(); ++index) {
      std::cout << values[index] << "\n";
    }
  } catch (const std::exception& error) {
    // libtorch's messages carry a C++ stack trace after the first line; the first line says what failed.
    std::string message = error.what();
    std::cerr << argv[0] << ": error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
