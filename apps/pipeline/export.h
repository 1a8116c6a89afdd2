// VG_API marks what libvoxgrad.so exports from the pipeline, which is otherwise compiled with
// hidden visibility (its internals are not part of the installed API). Installed as <voxgrad/export.h>.
#pragma once

#if defined(__GNUC__)
#define VG_API __attribute__((visibility("default")))
#else
#define VG_API
#endif
