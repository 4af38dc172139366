/*
 * cpldask_test -- a tiny CPL recipe for the cpldask test suite.
 *
 * It does nothing useful; it only lets the tests provoke every behaviour a
 * real pipeline recipe can show when it is run through python-cpl:
 *
 *   sleep      (double, s)   sleep before doing anything else
 *   alloc      (int, MB)     allocate and touch this many MB before the
 *                            products are written (kept until the end)
 *   fail       (bool)        set a CPL error "cpldask_test: failure requested"
 *                            and return it
 *   crash      (enum string) none|segv|abort|kill: NULL write, abort(),
 *                            raise(SIGKILL)
 *   noproducts (bool)        return success without writing any product
 *   nproducts  (int 0..1000) number of products PRODUCT_%04d.fits (tag
 *                            and PRO.CATG "PRODUCT"), a 16x16 float image
 *                            filled with the product index (plus
 *                            CPLDASK_TEST_FILL_OFFSET, a compile-time
 *                            define, 0 by default: two builds with other
 *                            products and the same version string)
 *   value      (double)      echoed as ESO QC ECHO VALUE
 *   label      (string)      echoed as ESO QC ECHO LABEL
 *   envvar     (string)      name of an environment variable whose value
 *                            is logged: "cpldask_test: ENV NAME=value"
 *                            ("unset" when it is not set)
 *   spin       (double, s)   burn this much CPU in each thread of an
 *                            OpenMP parallel region: the CPU time then
 *                            shows how many threads the runtime started
 *
 * Order of execution: TSTART, sleep, OMP log, alloc, fail, crash, noproducts,
 * TEND, products.  (alloc comes before fail/crash so that "alloc + kill"
 * can simulate an OOM kill of a big process.)
 *
 * Every product's primary header also gets
 *   ESO QC ECHO SLEEP, ESO QC ECHO NPRODUCTS, ESO QC ECHO ALLOC,
 *   ESO QC ECHO INDEX, ESO QC ECHO NRAW,
 *   ESO QC ECHO TSTART / TEND (gettimeofday, seconds since epoch;
 *   TEND is taken right before the first product is written),
 *   ESO QC ECHO PID, ESO QC ECHO OMP (getenv("OMP_NUM_THREADS") or "unset").
 *
 * Input: one or more frames tagged RAW (any readable FITS file).  Frames with
 * other tags are accepted and classified as CALIB.
 *
 * The recipe is a CPL_PLUGIN_TYPE_RECIPE_V2 plugin with a cpl_recipeconfig
 * (RAW -> PRODUCT).  python-cpl reads that configuration only through a
 * function named muse_processing_get_recipeconfig() exported by the recipe
 * library, so we export one (see the end of this file); with it
 * cpl.Recipe.tags == ['RAW'] and cpl.Recipe.output == {'RAW': ['PRODUCT']}.
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cpl.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define RECIPE_NAME     "cpldask_test"
#define RECIPE_CONTEXT  "cpldask." RECIPE_NAME
#define RECIPE_VERSION  10000
#define RECIPE_VERSION_STRING "1.0.0"
#define TAG_RAW         "RAW"
#define TAG_PRODUCT     "PRODUCT"
#define IMAGE_SIZE      16
#ifndef CPLDASK_TEST_FILL_OFFSET
#define CPLDASK_TEST_FILL_OFFSET 0
#endif

/* Exported prototypes */
int cpl_plugin_get_info(cpl_pluginlist *list);
cpl_recipeconfig *muse_processing_get_recipeconfig(cpl_recipe *recipe);

static int cpldask_test_create(cpl_plugin *plugin);
static int cpldask_test_exec(cpl_plugin *plugin);
static int cpldask_test_destroy(cpl_plugin *plugin);
static int cpldask_test(cpl_frameset *frames, const cpl_parameterlist *pars);

static const char cpldask_test_description[] =
    "Test recipe for cpldask. Input: one or more frames tagged " TAG_RAW
    " (any FITS file). Output: nproducts images tagged " TAG_PRODUCT
    " (PRODUCT_0000.fits, ...) whose primary headers echo the parameters "
    "as ESO QC ECHO *. Parameters allow sleeping, allocating memory, "
    "failing with a CPL error, crashing (segv, abort, kill) and "
    "succeeding without products.";

/*----------------------------------------------------------------------------*/
/* Plugin interface                                                           */
/*----------------------------------------------------------------------------*/

int cpl_plugin_get_info(cpl_pluginlist *list)
{
    cpl_recipe2 *recipe = cpl_calloc(1, sizeof *recipe);
    cpl_plugin *plugin = &recipe->base.interface;

    if (cpl_plugin_init(plugin,
                        CPL_PLUGIN_API,
                        RECIPE_VERSION,
                        CPL_PLUGIN_TYPE_RECIPE_V2,
                        RECIPE_NAME,
                        "cpldask test recipe: sleep, allocate, fail, crash "
                        "or write products on request",
                        cpldask_test_description,
                        "cpldask developers",
                        "cpldask@example.invalid",
                        "GPL-2.0-or-later",
                        cpldask_test_create,
                        cpldask_test_exec,
                        cpldask_test_destroy)) {
        cpl_free(recipe);
        return 1;
    }
    cpl_pluginlist_append(list, plugin);
    return 0;
}

cpl_recipeconfig *muse_processing_get_recipeconfig(cpl_recipe *recipe)
{
    if (recipe == NULL) {
        return NULL;
    }
    if (cpl_plugin_get_type(&recipe->interface) != CPL_PLUGIN_TYPE_RECIPE_V2) {
        return NULL;
    }
    return ((cpl_recipe2 *)recipe)->config;
}

static void add_param(cpl_parameterlist *list, cpl_parameter *p,
                      const char *alias)
{
    cpl_parameter_set_alias(p, CPL_PARAMETER_MODE_CLI, alias);
    cpl_parameter_set_alias(p, CPL_PARAMETER_MODE_CFG, alias);
    cpl_parameter_set_alias(p, CPL_PARAMETER_MODE_ENV, alias);
    cpl_parameter_disable(p, CPL_PARAMETER_MODE_ENV);
    cpl_parameterlist_append(list, p);
}

static int cpldask_test_create(cpl_plugin *plugin)
{
    if (plugin == NULL ||
        !(cpl_plugin_get_type(plugin) & CPL_PLUGIN_TYPE_RECIPE)) {
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_TYPE_MISMATCH,
                                          "plugin is not a recipe");
    }
    cpl_recipe *recipe = (cpl_recipe *)plugin;
    cpl_parameterlist *list = cpl_parameterlist_new();
    recipe->parameters = list;

    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".sleep", CPL_TYPE_DOUBLE,
                  "Seconds to sleep before doing anything else",
                  RECIPE_CONTEXT, 0.0), "sleep");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".fail", CPL_TYPE_BOOL,
                  "Set a CPL error and return it",
                  RECIPE_CONTEXT, CPL_FALSE), "fail");
    add_param(list, cpl_parameter_new_enum(
                  RECIPE_CONTEXT ".crash", CPL_TYPE_STRING,
                  "Crash the process: segv (NULL write), abort (abort()), "
                  "kill (raise(SIGKILL))",
                  RECIPE_CONTEXT, "none", 4, "none", "segv", "abort", "kill"),
              "crash");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".alloc", CPL_TYPE_INT,
                  "Allocate and touch this many MB before writing products",
                  RECIPE_CONTEXT, 0), "alloc");
    add_param(list, cpl_parameter_new_range(
                  RECIPE_CONTEXT ".nproducts", CPL_TYPE_INT,
                  "Number of " TAG_PRODUCT " frames to write",
                  RECIPE_CONTEXT, 1, 0, 1000), "nproducts");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".value", CPL_TYPE_DOUBLE,
                  "Value echoed as ESO QC ECHO VALUE",
                  RECIPE_CONTEXT, 1.0), "value");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".label", CPL_TYPE_STRING,
                  "String echoed as ESO QC ECHO LABEL",
                  RECIPE_CONTEXT, "x"), "label");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".envvar", CPL_TYPE_STRING,
                  "Name of an environment variable whose value is logged",
                  RECIPE_CONTEXT, ""), "envvar");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".spin", CPL_TYPE_DOUBLE,
                  "Seconds to busy-loop in an OpenMP parallel region",
                  RECIPE_CONTEXT, 0.0), "spin");
    add_param(list, cpl_parameter_new_value(
                  RECIPE_CONTEXT ".noproducts", CPL_TYPE_BOOL,
                  "Return success without writing any product",
                  RECIPE_CONTEXT, CPL_FALSE), "noproducts");

    if (cpl_plugin_get_type(plugin) == CPL_PLUGIN_TYPE_RECIPE_V2) {
        cpl_recipeconfig *config = cpl_recipeconfig_new();
        cpl_recipeconfig_set_tag(config, TAG_RAW, 1, -1);
        cpl_recipeconfig_set_output(config, TAG_RAW, TAG_PRODUCT);
        ((cpl_recipe2 *)plugin)->config = config;
    }

    return (int)cpl_error_get_code();
}

static int cpldask_test_exec(cpl_plugin *plugin)
{
    if (plugin == NULL ||
        !(cpl_plugin_get_type(plugin) & CPL_PLUGIN_TYPE_RECIPE)) {
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_TYPE_MISMATCH,
                                          "plugin is not a recipe");
    }
    cpl_recipe *recipe = (cpl_recipe *)plugin;
    return cpldask_test(recipe->frames, recipe->parameters);
}

static int cpldask_test_destroy(cpl_plugin *plugin)
{
    if (plugin == NULL ||
        !(cpl_plugin_get_type(plugin) & CPL_PLUGIN_TYPE_RECIPE)) {
        return -1;
    }
    cpl_recipe *recipe = (cpl_recipe *)plugin;
    cpl_parameterlist_delete(recipe->parameters);
    recipe->parameters = NULL;
    if (cpl_plugin_get_type(plugin) == CPL_PLUGIN_TYPE_RECIPE_V2) {
        cpl_recipeconfig_delete(((cpl_recipe2 *)plugin)->config);
        ((cpl_recipe2 *)plugin)->config = NULL;
    }
    return 0;
}

/*----------------------------------------------------------------------------*/
/* Helpers                                                                    */
/*----------------------------------------------------------------------------*/

static double wall_time(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

static double thread_cpu_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_seconds(double seconds)
{
    if (!(seconds > 0.0)) {
        return;
    }
    struct timespec req, rem;
    req.tv_sec = (time_t)seconds;
    req.tv_nsec = (long)((seconds - (double)req.tv_sec) * 1e9);
    if (req.tv_nsec >= 1000000000L) {
        req.tv_sec += 1;
        req.tv_nsec -= 1000000000L;
    }
    while (nanosleep(&req, &rem) == -1 && errno == EINTR) {
        req = rem;
    }
}

static const cpl_parameter *find_par(const cpl_parameterlist *pars,
                                     const char *name)
{
    return cpl_parameterlist_find_const(pars, name);
}

/*----------------------------------------------------------------------------*/
/* The recipe                                                                 */
/*----------------------------------------------------------------------------*/

static int cpldask_test(cpl_frameset *frames, const cpl_parameterlist *pars)
{
    const double tstart = wall_time();
    const long pid = (long)getpid();

    const double sleep_s = cpl_parameter_get_double(
        find_par(pars, RECIPE_CONTEXT ".sleep"));
    const int fail = cpl_parameter_get_bool(
        find_par(pars, RECIPE_CONTEXT ".fail"));
    const char *crash = cpl_parameter_get_string(
        find_par(pars, RECIPE_CONTEXT ".crash"));
    const int alloc_mb = cpl_parameter_get_int(
        find_par(pars, RECIPE_CONTEXT ".alloc"));
    const int nproducts = cpl_parameter_get_int(
        find_par(pars, RECIPE_CONTEXT ".nproducts"));
    const double value = cpl_parameter_get_double(
        find_par(pars, RECIPE_CONTEXT ".value"));
    const char *label = cpl_parameter_get_string(
        find_par(pars, RECIPE_CONTEXT ".label"));
    const char *envvar = cpl_parameter_get_string(
        find_par(pars, RECIPE_CONTEXT ".envvar"));
    const int noproducts = cpl_parameter_get_bool(
        find_par(pars, RECIPE_CONTEXT ".noproducts"));
    const double spin_s = cpl_parameter_get_double(
        find_par(pars, RECIPE_CONTEXT ".spin"));
    if (cpl_error_get_code() != CPL_ERROR_NONE) {
        return (int)cpl_error_set_where(cpl_func);
    }
    if (crash == NULL) {
        crash = "none";
    }
    if (label == NULL) {
        label = "";
    }

    /* 1. sleep */
    sleep_seconds(sleep_s);

    /* 2. environment report */
    const char *omp_env = getenv("OMP_NUM_THREADS");
    const char *omp = omp_env != NULL ? omp_env : "unset";
    cpl_msg_info(cpl_func, "cpldask_test: OMP_NUM_THREADS=%s", omp);
    if (envvar != NULL && envvar[0] != '\0') {
        const char *env_value = getenv(envvar);
        cpl_msg_info(cpl_func, "cpldask_test: ENV %s=%s", envvar,
                     env_value != NULL ? env_value : "unset");
    }
    cpl_msg_info(cpl_func, "cpldask_test: pid=%ld sleep=%g alloc=%d MB "
                 "nproducts=%d crash=%s fail=%d noproducts=%d",
                 pid, sleep_s, alloc_mb, nproducts, crash, fail, noproducts);

    /* 2b. burn CPU in every OpenMP thread, as a multi-threaded recipe does */
    int nthreads = 1;
    if (spin_s > 0) {
#pragma omp parallel
        {
            volatile double x = 0;
            /* a fixed amount of CPU per thread (not of wall time): the recipe's
               CPU time is then threads x spin, however busy the machine is */
            const double until = thread_cpu_time() + spin_s;
#pragma omp master
#ifdef _OPENMP
            nthreads = omp_get_num_threads();
#else
            nthreads = 1;
#endif
            while (thread_cpu_time() < until) {
                for (int i = 0; i < 10000; i++) x += i;
            }
        }
    }
    cpl_msg_info(cpl_func, "cpldask_test: spun in %d OpenMP threads", nthreads);

    /* 3. allocate and touch memory */
    char *block = NULL;
    if (alloc_mb < 0) {
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_ILLEGAL_INPUT,
                                          "cpldask_test: alloc must be >= 0, "
                                          "got %d", alloc_mb);
    }
    if (alloc_mb > 0) {
        size_t nbytes = (size_t)alloc_mb * 1024u * 1024u;
        block = malloc(nbytes);
        if (block == NULL) {
            return (int)cpl_error_set_message(
                cpl_func, CPL_ERROR_ILLEGAL_OUTPUT,
                "cpldask_test: could not allocate %d MB", alloc_mb);
        }
        memset(block, 0x5a, nbytes);
        cpl_msg_info(cpl_func, "cpldask_test: allocated and touched %d MB",
                     alloc_mb);
    }

    /* 4. failure */
    if (fail) {
        free(block);
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_ILLEGAL_INPUT,
                                          "cpldask_test: failure requested");
    }

    /* 5. crashes */
    if (strcmp(crash, "segv") == 0) {
        cpl_msg_info(cpl_func, "cpldask_test: crashing with SIGSEGV");
        /* volatile pointer: the compiler must not see (and trap on) the NULL */
        int *volatile nullptr_ = NULL;
        *nullptr_ = 42;
    } else if (strcmp(crash, "abort") == 0) {
        cpl_msg_info(cpl_func, "cpldask_test: calling abort()");
        abort();
    } else if (strcmp(crash, "kill") == 0) {
        cpl_msg_info(cpl_func, "cpldask_test: raising SIGKILL");
        raise(SIGKILL);
    } else if (strcmp(crash, "none") != 0) {
        free(block);
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_ILLEGAL_INPUT,
                                          "cpldask_test: unknown crash mode "
                                          "'%s'", crash);
    }

    /* 6. success without products */
    if (noproducts) {
        cpl_msg_info(cpl_func, "cpldask_test: noproducts requested, "
                     "returning success without products");
        free(block);
        return 0;
    }

    /* 7. classify input frames */
    cpl_size nraw = 0;
    const cpl_frame *first_raw = NULL;
    cpl_size nframes = frames != NULL ? cpl_frameset_get_size(frames) : 0;
    for (cpl_size i = 0; i < nframes; i++) {
        cpl_frame *frame = cpl_frameset_get_position(frames, i);
        const char *tag = cpl_frame_get_tag(frame);
        if (tag != NULL && strcmp(tag, TAG_RAW) == 0) {
            cpl_frame_set_group(frame, CPL_FRAME_GROUP_RAW);
            if (first_raw == NULL) {
                first_raw = frame;
            }
            nraw++;
        } else if (cpl_frame_get_group(frame) != CPL_FRAME_GROUP_PRODUCT) {
            cpl_frame_set_group(frame, CPL_FRAME_GROUP_CALIB);
        }
    }
    if (nraw == 0) {
        free(block);
        return (int)cpl_error_set_message(cpl_func, CPL_ERROR_DATA_NOT_FOUND,
                                          "cpldask_test: no input frame "
                                          "tagged " TAG_RAW);
    }

    /* 8. products */
    const double tend = wall_time();
    cpl_image *image = cpl_image_new(IMAGE_SIZE, IMAGE_SIZE, CPL_TYPE_FLOAT);
    for (int i = 0; i < nproducts; i++) {
        char filename[64];
        snprintf(filename, sizeof filename, TAG_PRODUCT "_%04d.fits", i);
        cpl_image_fill_window(image, 1, 1, IMAGE_SIZE, IMAGE_SIZE,
                              (double)i + CPLDASK_TEST_FILL_OFFSET);

        cpl_propertylist *header = cpl_propertylist_new();
        cpl_propertylist_append_string(header, CPL_DFS_PRO_CATG, TAG_PRODUCT);
        cpl_propertylist_append_double(header, "ESO QC ECHO VALUE", value);
        cpl_propertylist_append_string(header, "ESO QC ECHO LABEL", label);
        cpl_propertylist_append_double(header, "ESO QC ECHO SLEEP", sleep_s);
        cpl_propertylist_append_int(header, "ESO QC ECHO NPRODUCTS",
                                    nproducts);
        cpl_propertylist_append_int(header, "ESO QC ECHO ALLOC", alloc_mb);
        cpl_propertylist_append_int(header, "ESO QC ECHO INDEX", i);
        cpl_propertylist_append_long(header, "ESO QC ECHO NRAW", (long)nraw);
        cpl_propertylist_append_double(header, "ESO QC ECHO TSTART", tstart);
        cpl_propertylist_append_double(header, "ESO QC ECHO TEND", tend);
        cpl_propertylist_append_long(header, "ESO QC ECHO PID", pid);
        cpl_propertylist_append_string(header, "ESO QC ECHO OMP", omp);
        cpl_propertylist_append_int(header, "ESO QC ECHO NTHREADS", nthreads);
        cpl_propertylist_set_comment(header, "ESO QC ECHO TSTART",
                                     "[s] exec start, since epoch");
        cpl_propertylist_set_comment(header, "ESO QC ECHO TEND",
                                     "[s] before products, since epoch");

        cpl_dfs_save_image(frames, NULL, pars, frames, first_raw, image,
                           CPL_TYPE_FLOAT, RECIPE_NAME, header, NULL,
                           RECIPE_NAME "/" RECIPE_VERSION_STRING, filename);
        cpl_propertylist_delete(header);
        if (cpl_error_get_code() != CPL_ERROR_NONE) {
            break;
        }
    }
    cpl_image_delete(image);
    free(block);

    if (cpl_error_get_code() != CPL_ERROR_NONE) {
        return (int)cpl_error_set_where(cpl_func);
    }
    cpl_msg_info(cpl_func, "cpldask_test: wrote %d product(s)", nproducts);
    return 0;
}
