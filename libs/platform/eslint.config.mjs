// ESLint for the storefront's script (shopmesh_platform/storefront/app.js), run by `make lint`. Self-contained
// (no plugin or shared config to resolve beside .tools/): the rules that catch real mistakes in a small
// browser module, and the browser globals it may use; any other global is a typo.
export default [
  {
    files: ["**/*.js"],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: Object.fromEntries(
        [
          "FormData",
          "Intl",
          "URL",
          "URLSearchParams",
          "clearTimeout",
          "crypto",
          "document",
          "fetch",
          "localStorage",
          "location",
          "sessionStorage",
          "setTimeout",
          "window",
        ].map((name) => [name, "readonly"]),
      ),
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      "no-undef": "error",
      "no-unused-vars": ["error", { args: "after-used", argsIgnorePattern: "^_" }],
      "no-redeclare": "error",
      "no-shadow": "error",
      "no-unreachable": "error",
      "no-dupe-keys": "error",
      "no-const-assign": "error",
      "no-self-compare": "error",
      "no-unsafe-finally": "error",
      "no-unsafe-optional-chaining": "error",
      "no-fallthrough": "error",
      "no-var": "error",
      "prefer-const": "error",
      eqeqeq: "error",
      "require-await": "error",
      // Data becomes text, never markup (docs/storefront.md).
      "no-restricted-properties": [
        "error",
        { property: "innerHTML", message: "build elements with h(); data is text (textContent)" },
        { property: "outerHTML", message: "build elements with h(); data is text (textContent)" },
        { property: "insertAdjacentHTML", message: "build elements with h(); data is text (textContent)" },
      ],
    },
  },
];
