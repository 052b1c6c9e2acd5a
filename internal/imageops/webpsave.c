/* WebP results, saved as libvips 8.14's webpsave saves them, byte for byte, but with an encode that a
 * cancel stops.
 *
 * libvips' saver gathers the whole picture in memory, then encodes it with one WebPEncode call (its
 * sink_disc callback, on the last strip). Nothing interrupts that call: libwebp's progress hook, the
 * only way in, is not exposed by libvips, and it would not be enough anyway. libwebp calls it when the
 * integer percentage it reports changes, and the percentage does not follow time: 20 points for the
 * analysis, 20 for the first coding pass, then halving steps for each pass that is done again because
 * the first partition grew too large (large noisy pictures); the lossless encode of a lossy picture's
 * alpha plane, and the token emission, report nothing at all. Measured on a 5000x5000 result of 2x
 * noise (CPU time): 110-180 ms between calls in the first pass, 220 ms in the second, then 0.45-1.8 s;
 * an RGBA result spends seconds in its alpha plane without a call.
 *
 * So the encode runs in a process of its own, which a cancel ends at once:
 *
 *   - up_init starts a small encoder server (up_webp_start_encoder): a fork of the process taken while
 *     it runs no image work, that only ever forks again. Forking the service itself for each encode
 *     would copy a busy multi-threaded process (another thread may hold a lock the encoder needs, and
 *     every page the service writes while the encode runs would be copied); the server is one thread
 *     with nothing else to do.
 *   - The picture is gathered here, in a memfd, by the same kind of evaluation libvips' saver runs
 *     (vips_sink_disc; every tile still goes through the call's stage, so the kill flag and the log
 *     tag work as for any other format). The request (size, bands, the WebPConfig) and two file
 *     descriptors, the memfd and the write end of a pipe, go to the server over a socket; it forks an
 *     encoder, which maps the picture, encodes it exactly as libvips would (encode_frame), and writes
 *     the bitstream into the pipe.
 *   - The calling thread waits on the pipe, looking at the kill flag every UP_WEBP_POLL_MS. Once killed
 *     it closes its end: the encoder's watchdog thread, waiting for exactly that (a pipe with no reader
 *     reports POLLERR to its writer), ends the encoder with _exit. Nothing else is needed: no pid to
 *     signal (and no pid reuse to fear), and an encoder whose service died goes the same way.
 *   - The metadata is added here as libvips adds it (add_metadata), and the bytes go to the target.
 *
 * Byte for byte: the same WebPConfig (webp_config), the same picture (imported from the same RGB(A)
 * rows with the same flags), the same libwebp: the bitstream cannot differ. TestWebPSaveAsLibvips
 * compares whole files with libvips' saver (lossy with and without alpha, metadata, animations' first
 * frames). One deliberate difference: libvips 8.14.1's saver ignores its strip argument (it reads a
 * field of its own that nothing sets; fixed in 8.14.2), so the service's StripMetadata never stripped a
 * WebP result; ours strips as 8.14.2 does (the same image chunks, no metadata chunks).
 *
 * Should the server be missing (it could not be started, or it died), the encode runs in this process,
 * with the progress hook checking the kill flag: what libwebp allows in-process. Images libvips'
 * saver would convert first (not 3 or 4 bands of uchar sRGB, or several pages) go to libvips' saver
 * itself: WebP results come from WebP sources, which always load as 3 or 4 bands of uchar sRGB, so
 * only tests that change the output format get there. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vips/vips.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include "webpsave.h"

/* libvips rebuilds a saved image's EXIF block from its header fields with this function (libvips'
 * foreign/exif.c). It is
 * not in libvips' installed headers, but libvips.so exports it (8.14). Reimplementing it would mean
 * redoing libvips' EXIF logic; the byte-for-byte tests fail should another libvips change it. */
extern int vips__exif_update(VipsImage *image);

/* How often the waiting thread looks at the kill flag while the encoder runs. */
#define UP_WEBP_POLL_MS 5

/* What libvips' saver writes for each metadata field it finds on the image (libvips'
 * foreign/webp2vips.c, vips__webp_names), in its order. */
static const struct {
	const char *field, *fourcc;
} metadata_chunks[] = {
	{VIPS_META_ICC_NAME, "ICCP"},
	{VIPS_META_EXIF_NAME, "EXIF"},
	{VIPS_META_XMP_NAME, "XMP "},
};

/* ---- The encode ---- */

/* webp_config sets config as libvips 8.14's webpsave sets it (libvips' foreign/webpsave.c,
 * vips_foreign_save_webp_init_config) for lossy output at Q q and effort effort, with its defaults for
 * everything the service does not pass: preset "default", alpha_q 100, lossless, near_lossless and
 * smart_subsample off. */
static int webp_config(WebPConfig *config, int q, int effort) {
	const int lossless = 0, near_lossless = 0, smart_subsample = 0, alpha_q = 100;
	if (!WebPConfigInit(config)) {
		vips_error("webpsave", "%s", "config version error");
		return -1;
	}
	/* The presets are for lossy compression only: libvips applies them only then. */
	if (!(lossless || near_lossless) && !WebPConfigPreset(config, WEBP_PRESET_DEFAULT, q)) {
		vips_error("webpsave", "%s", "config version error");
		return -1;
	}
	config->lossless = lossless || near_lossless;
	config->alpha_quality = alpha_q;
	config->method = effort;
	if (lossless)
		config->quality = q;
	if (near_lossless)
		config->near_lossless = q;
	if (smart_subsample)
		config->use_sharp_yuv = 1;
	if (!WebPValidateConfig(config)) {
		vips_error("webpsave", "%s", "invalid configuration");
		return -1;
	}
	return 0;
}

static int progress_hook(int percent, const WebPPicture *pic) {
	volatile int *kill = (volatile int *) pic->user_data;
	return !*kill;
}

/* encode_frame encodes w x h pixels of bands (3 or 4) bytes, rows contiguous, into out, as libvips'
 * saver encodes a frame (libvips' foreign/webpsave.c, vips_foreign_save_webp_write_webp_image and
 * _write_frame): the
 * same picture settings (use_argb off: it is on only for lossless, near-lossless or smart
 * subsampling), the same import, the same WebPEncode. With kill, libwebp's progress hook stops the
 * encode once *kill is set (the in-process fallback). Returns libwebp's error code (VP8_ENC_OK: 0). */
static int encode_frame(const uint8_t *pixels, int w, int h, int bands, const WebPConfig *config,
	volatile int *kill, WebPMemoryWriter *out) {
	WebPPicture pic;
	if (!WebPPictureInit(&pic))
		return VP8_ENC_ERROR_BAD_DIMENSION; /* a version mismatch: any error will do */
	pic.writer = WebPMemoryWrite;
	pic.custom_ptr = out;
	pic.use_argb = 0;
	pic.width = w;
	pic.height = h;
	if (kill) {
		pic.progress_hook = progress_hook;
		pic.user_data = (void *) kill;
	}
	int ok = bands == 4 ? WebPPictureImportRGBA(&pic, pixels, w * 4) : WebPPictureImportRGB(&pic, pixels, w * 3);
	int error = ok ? VP8_ENC_OK : VP8_ENC_ERROR_OUT_OF_MEMORY;
	if (ok && !WebPEncode(config, &pic))
		error = pic.error_code != VP8_ENC_OK ? pic.error_code : VP8_ENC_ERROR_OUT_OF_MEMORY;
	WebPPictureFree(&pic);
	return error;
}

static const char *encode_error(int code) {
	switch (code) {
	case VP8_ENC_ERROR_OUT_OF_MEMORY: return "out of memory";
	case VP8_ENC_ERROR_BITSTREAM_OUT_OF_MEMORY: return "out of memory for the bitstream";
	case VP8_ENC_ERROR_BAD_DIMENSION: return "bad dimension";
	case VP8_ENC_ERROR_PARTITION0_OVERFLOW: return "partition 0 overflow";
	case VP8_ENC_ERROR_PARTITION_OVERFLOW: return "partition overflow";
	case VP8_ENC_ERROR_BAD_WRITE: return "bad write";
	case VP8_ENC_ERROR_FILE_TOO_BIG: return "file too big";
	case VP8_ENC_ERROR_USER_ABORT: return "aborted";
	default: return "error";
	}
}

/* ---- The encoder process ---- */

/* What the server is sent for one encode, with two file descriptors: the picture (a memfd of w x h x
 * bands bytes) and the write end of the pipe the encoder answers into. */
typedef struct {
	int w, h, bands;
	WebPConfig config;
} Request;

/* What the encoder writes into the pipe before the bitstream (size bytes; none on error). */
#define UP_WEBP_MAGIC 0x55504257u
#define UP_WEBP_NO_MAP -1  /* the encoder could not map the picture */
#define UP_WEBP_NO_FORK -2 /* the server could not fork an encoder: encode in-process */
typedef struct {
	uint32_t magic;
	int32_t error; /* libwebp's error code, or UP_WEBP_NO_MAP, or UP_WEBP_NO_FORK (from the server) */
	uint64_t size;
} Answer;

static int server_fd = -1; /* this process's end of the socket to the server; -1: none */
static pid_t server_pid;
static GMutex server_lock; /* guards the two above when the server is found dead */

static int write_all(int fd, const void *p, size_t n) {
	const char *b = p;
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t) w;
	}
	return 0;
}

/* The encoder's watchdog: the pipe's reader closing its end (a cancel, or the service's death) wakes
 * poll with POLLERR, and the encoder ends there, whatever libwebp is doing. */
static void *watchdog(void *arg) {
	struct pollfd p = {.fd = (int) (intptr_t) arg, .events = 0};
	for (;;) {
		if (poll(&p, 1, -1) > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL)))
			_exit(3);
	}
	return NULL;
}

/* encoder runs in a process forked by the server for one request; it never returns. */
static void encoder(const Request *r, int picture_fd, int out_fd) {
	pthread_t t;
	if (pthread_create(&t, NULL, watchdog, (void *) (intptr_t) out_fd))
		_exit(2);
	Answer a = {.magic = UP_WEBP_MAGIC, .error = UP_WEBP_NO_MAP};
	size_t size = (size_t) r->w * r->h * r->bands;
	/* Populated at once: one pass of the kernel instead of a fault every 4 KB. */
	const uint8_t *pixels = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, picture_fd, 0);
	close(picture_fd);
	WebPMemoryWriter mw;
	WebPMemoryWriterInit(&mw);
	if (pixels != MAP_FAILED)
		a.error = encode_frame(pixels, r->w, r->h, r->bands, &r->config, NULL, &mw);
	if (a.error == VP8_ENC_OK)
		a.size = mw.size;
	if (write_all(out_fd, &a, sizeof a) || (a.size && write_all(out_fd, mw.mem, mw.size)))
		_exit(1);
	_exit(0);
}

/* Closes every descriptor from lo up, but keep. */
static void close_from(int lo, int keep) {
#ifdef SYS_close_range
	if ((keep < lo || keep == lo || syscall(SYS_close_range, lo, keep - 1, 0) == 0) &&
		syscall(SYS_close_range, VIPS_MAX(lo, keep + 1), ~0U, 0) == 0)
		return;
#endif
	/* Older kernels (before 5.9): what /proc lists. */
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	int dfd = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (fd >= lo && fd != keep && fd != dfd && e->d_name[0] != '.')
			close(fd);
	}
	closedir(d);
}

/* The server: one thread, forked from the service while it runs no image work. It holds nothing of the
 * service's (every descriptor but its socket is closed: a copy of a connection would keep it open after
 * the service closed it), reaps its children automatically, forks an encoder per request, and ends
 * when the service's end of the socket closes. */
static void server(int sock) {
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	signal(SIGCHLD, SIG_IGN); /* no zombies: the service learns an encoder's end from its pipe */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	close_from(3, sock);
	for (;;) {
		Request r;
		int fds[2] = {-1, -1};
		char control[CMSG_SPACE(sizeof fds)];
		struct iovec iov = {.iov_base = &r, .iov_len = sizeof r};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
		ssize_t n = recvmsg(sock, &msg, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0); /* the service is gone */
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof fds))
			memcpy(fds, CMSG_DATA(c), sizeof fds);
		/* A malformed request is dropped: closing its pipe tells the service. */
		if (n == sizeof r && fds[0] >= 0 && fds[1] >= 0) {
			pid_t pid = fork();
			if (pid == 0) {
				close(sock);
				encoder(&r, fds[0], fds[1]);
			}
			if (pid < 0) {
				Answer a = {.magic = UP_WEBP_MAGIC, .error = UP_WEBP_NO_FORK};
				write_all(fds[1], &a, sizeof a);
			}
		}
		if (fds[0] >= 0)
			close(fds[0]);
		if (fds[1] >= 0)
			close(fds[1]);
	}
}

int up_webp_start_encoder(void) {
	/* Bind libwebp's encoder functions and run its one-time set-up here, before the fork: the
	 * encoders then start from a process that has done it. */
	WebPConfig config;
	WebPMemoryWriter mw;
	uint8_t px[16 * 16 * 4] = {0};
	WebPMemoryWriterInit(&mw);
	if (webp_config(&config, 75, 4) == 0)
		encode_frame(px, 16, 16, 4, &config, NULL, &mw);
	WebPMemoryWriterClear(&mw);
	vips_error_clear();

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return -1;
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		errno = e;
		return -1;
	}
	if (pid == 0) {
		close(sv[0]);
		server(sv[1]);
	}
	close(sv[1]);
	g_mutex_lock(&server_lock);
	server_fd = sv[0];
	server_pid = pid;
	g_mutex_unlock(&server_lock);
	return 0;
}

/* server_gone forgets a server that no longer takes requests: encodes run in-process from then on.
 * The socket stays open (one descriptor, once): another thread may be about to send on it, and must
 * not find its number reused. */
static void server_gone(int fd) {
	g_mutex_lock(&server_lock);
	if (server_fd == fd) {
		server_fd = -1;
		waitpid(server_pid, NULL, WNOHANG);
		g_log("VIPS", G_LOG_LEVEL_WARNING, "%s", "webpsave: the encoder server is gone: WebP results are encoded in-process, canceled at libwebp's progress steps only");
	}
	g_mutex_unlock(&server_lock);
}

/* encode_out_of_process encodes the picture in the memfd picture_fd through the server. Returns 0 and
 * the bitstream in *bits (g_free it), 1 when there is no server to ask or it could not fork, or -1 with
 * libvips' error buffer set (killed included). */
static int encode_out_of_process(int picture_fd, int w, int h, int bands, const WebPConfig *config,
	volatile int *kill, uint8_t **bits, size_t *size) {
	g_mutex_lock(&server_lock);
	int sock = server_fd;
	g_mutex_unlock(&server_lock);
	if (sock < 0)
		return 1;

	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC)) {
		vips_error_system(errno, "webpsave", "%s", "pipe");
		return -1;
	}
	/* Fewer, larger reads of the bitstream (best effort: the default 64 KB works too). */
	fcntl(pipefd[0], F_SETPIPE_SZ, 1 << 20);
	Request r = {.w = w, .h = h, .bands = bands, .config = *config};
	int fds[2] = {picture_fd, pipefd[1]};
	char control[CMSG_SPACE(sizeof fds)];
	memset(control, 0, sizeof control);
	struct iovec iov = {.iov_base = &r, .iov_len = sizeof r};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof fds);
	memcpy(CMSG_DATA(c), fds, sizeof fds);
	ssize_t sent;
	do
		sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	close(pipefd[1]); /* the encoder holds the only write end now */
	if (sent != (ssize_t) sizeof r) {
		close(pipefd[0]);
		server_gone(sock);
		return 1;
	}

	Answer a;
	size_t got = 0, want = sizeof a;
	uint8_t *buf = NULL;
	int result = -1;
	for (;;) {
		if (*kill) {
			vips_error("upsize", "%s", "canceled");
			break;
		}
		struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
		int n = poll(&p, 1, UP_WEBP_POLL_MS);
		if (n < 0 && errno != EINTR) {
			vips_error_system(errno, "webpsave", "%s", "poll");
			break;
		}
		if (n <= 0)
			continue;
		uint8_t *dst = buf ? buf + (got - sizeof a) : (uint8_t *) &a + got;
		ssize_t k = read(pipefd[0], dst, want - got);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0) {
			vips_error("webpsave", "%s", "the encoder process ended without an answer");
			break;
		}
		got += (size_t) k;
		if (got < want)
			continue;
		if (!buf) {
			if (a.magic != UP_WEBP_MAGIC) {
				vips_error("webpsave", "%s", "the encoder process answered garbage");
				break;
			}
			if (a.error == UP_WEBP_NO_FORK) {
				result = 1;
				break;
			}
			if (a.error != VP8_ENC_OK) {
				vips_error("webpsave", "unable to encode (%s)", a.error == UP_WEBP_NO_MAP ? "the picture could not be mapped" : encode_error(a.error));
				break;
			}
			if (a.size == 0 || !(buf = g_try_malloc(a.size))) {
				vips_error("webpsave", "%s", "out of memory");
				break;
			}
			want += a.size;
			continue;
		}
		*bits = buf;
		*size = a.size;
		buf = NULL;
		result = 0;
		break;
	}
	/* On a cancel this is what stops the encoder (its watchdog sees the pipe lose its reader). */
	close(pipefd[0]);
	g_free(buf);
	return result;
}

/* ---- The save ---- */

typedef struct {
	uint8_t *pixels;
	int bands;
} Frame;

/* gather copies each strip the evaluation delivers into the frame, as libvips' saver does. */
static int gather(VipsRegion *region, VipsRect *area, void *a) {
	Frame *f = (Frame *) a;
	size_t line = (size_t) area->width * f->bands;
	for (int y = area->top; y < VIPS_RECT_BOTTOM(area); y++)
		memcpy(f->pixels + (size_t) y * line, VIPS_REGION_ADDR(region, area->left, y), line);
	return 0;
}

/* add_metadata wraps the bitstream in the container libvips writes (libvips' foreign/webpsave.c,
 * vips_webp_add_metadata):
 * through libwebp's mux, with the image's ICC profile, EXIF (rebuilt from the header fields first) and
 * XMP as chunks unless stripped. libvips also sets the loop count there, on animations only: a result
 * is one frame. Returns 0 and the file in *file (WebPDataClear it). */
static int add_metadata(VipsImage *img, const uint8_t *bits, size_t size, int strip, WebPData *file) {
	WebPData data = {.bytes = bits, .size = size};
	WebPMux *mux = WebPMuxCreate(&data, 1);
	int result = -1;
	if (!mux) {
		vips_error("webpsave", "%s", "mux error");
		return -1;
	}
	if (!strip) {
		if (vips__exif_update(img))
			goto done;
		for (size_t i = 0; i < G_N_ELEMENTS(metadata_chunks); i++) {
			const void *blob;
			size_t len;
			if (!vips_image_get_typeof(img, metadata_chunks[i].field))
				continue;
			if (vips_image_get_blob(img, metadata_chunks[i].field, &blob, &len))
				goto done;
			WebPData chunk = {.bytes = blob, .size = len};
			if (WebPMuxSetChunk(mux, metadata_chunks[i].fourcc, &chunk, 1) != WEBP_MUX_OK) {
				vips_error("webpsave", "%s", "chunk add error");
				goto done;
			}
		}
	}
	WebPDataInit(file);
	if (WebPMuxAssemble(mux, file) != WEBP_MUX_OK) {
		vips_error("webpsave", "%s", "mux error");
		goto done;
	}
	result = 0;
done:
	WebPMuxDelete(mux);
	return result;
}

/* Our saver takes what libvips' saver would write without converting it first. */
static int ours(VipsImage *in) {
	return in->Coding == VIPS_CODING_NONE && in->BandFmt == VIPS_FORMAT_UCHAR &&
		(in->Bands == 3 || in->Bands == 4) && in->Type == VIPS_INTERPRETATION_sRGB &&
		vips_image_get_page_height(in) == in->Ysize;
}

int up_webpsave(VipsImage *in, VipsTarget *target, int q, int effort, int strip, volatile int *kill, int in_process) {
	if (!ours(in))
		return vips_webpsave_target(in, target, "Q", q, "effort", effort, "strip", strip, NULL);
	if (in->Xsize > 16383 || in->Ysize > 16383) {
		vips_error("webpsave", "%s", "image too large");
		return -1;
	}
	WebPConfig config;
	if (webp_config(&config, q, effort))
		return -1;

	/* A copy for the metadata, which is changed below, as libvips' saver does. It drops an ICC
	 * profile that does not fit the image (libvips' foreign/foreign.c, vips__foreign_convert_saveable). */
	VipsImage *img;
	if (vips_copy(in, &img, NULL))
		return -1;
	if (vips_image_get_typeof(img, VIPS_META_ICC_NAME)) {
		const void *icc;
		size_t len;
		if (!vips_image_get_blob(img, VIPS_META_ICC_NAME, &icc, &len) && !vips_icc_is_compatible_profile(img, icc, len))
			vips_image_remove(img, VIPS_META_ICC_NAME);
	}

	int result = -1, fd = -1;
	size_t frame_size = (size_t) img->Xsize * img->Ysize * img->Bands;
	Frame f = {.pixels = NULL, .bands = img->Bands};
	uint8_t *bits = NULL;
	size_t nbits = 0;
	WebPData file = {NULL, 0};
	WebPMemoryWriter mw;
	WebPMemoryWriterInit(&mw);

	/* The frame: in a memfd the encoder maps, or in memory for an in-process encode. */
	g_mutex_lock(&server_lock);
	int out_of_process = server_fd >= 0 && !in_process;
	g_mutex_unlock(&server_lock);
	if (out_of_process) {
		fd = memfd_create("upsize-webp-frame", MFD_CLOEXEC);
		if (fd < 0 || ftruncate(fd, (off_t) frame_size) ||
			(f.pixels = mmap(NULL, frame_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED) {
			f.pixels = NULL;
			vips_error_system(errno, "webpsave", "failed to allocate %zu bytes", frame_size);
			goto done;
		}
	}
	else if (!(f.pixels = g_try_malloc(frame_size))) {
		vips_error("webpsave", "failed to allocate %zu bytes", frame_size);
		goto done;
	}
	if (vips_sink_disc(img, gather, &f))
		goto done;

	int r = out_of_process ? encode_out_of_process(fd, img->Xsize, img->Ysize, img->Bands, &config, kill, &bits, &nbits) : 1;
	if (r < 0)
		goto done;
	if (r > 0) {
		int error = encode_frame(f.pixels, img->Xsize, img->Ysize, img->Bands, &config, kill, &mw);
		if (error != VP8_ENC_OK) {
			if (*kill)
				vips_error("upsize", "%s", "canceled");
			else
				vips_error("webpsave", "unable to encode (%s)", encode_error(error));
			goto done;
		}
		bits = mw.mem;
		nbits = mw.size;
	}
	/* The frame is no longer needed: free it before the file is assembled. */
	if (fd >= 0) {
		munmap(f.pixels, frame_size);
		close(fd);
		fd = -1;
	}
	else
		g_free(f.pixels);
	f.pixels = NULL;

	if (add_metadata(img, bits, nbits, strip, &file))
		goto done;
	/* The bytes go out in pieces, so that a cancel (the target refusing writes) stops them too. */
	for (size_t off = 0; off < file.size; off += 1 << 20)
		if (vips_target_write(target, file.bytes + off, VIPS_MIN(file.size - off, (size_t) 1 << 20)))
			goto done;
	if (vips_target_end(target))
		goto done;
	result = 0;

done:
	if (fd >= 0) {
		if (f.pixels)
			munmap(f.pixels, frame_size);
		close(fd);
	}
	else
		g_free(f.pixels);
	if (bits != mw.mem)
		g_free(bits);
	WebPMemoryWriterClear(&mw);
	WebPDataClear(&file);
	g_object_unref(img);
	return result;
}
