// Every string the console shows, in English and Simplified Chinese. The browser's language picks one;
// the switch in the header keeps the choice in localStorage.
const STRINGS = {
  en: {
    models: "Model square", playground: "Playground", compare: "M×N compare", keys: "API keys", usage: "Usage",
    profile: "Profile", admin: "Admin", login: "Log in", logout: "Log out", user: "User name", password: "Password",
    lang: "中文", model: "Model", chip: "Chip", context: "Context", price: "Price (in/out per 1M)", state: "State",
    example: "API example for", base_url: "Base URL", system: "System prompt", send: "Send", stop: "Stop",
    clear: "Clear", temperature: "temperature", top_p: "top_p", top_k: "top_k", max_tokens: "max_tokens",
    presence_penalty: "presence_penalty", frequency_penalty: "frequency_penalty",
    repetition_penalty: "repetition_penalty", stop_seq: "stop (comma-separated)", message: "Message",
    tokens: "tokens", ttft: "TTFT", tps: "tokens/s", cost: "cost", pick_cells: "Cells to compare (2–6)",
    prompt: "Prompt", run: "Run", choose_2_6: "Choose 2 to 6 cells.", name: "Name", create: "Create",
    key_once: "Your new key. It is shown only now: copy it.", copy: "Copy", copied: "Copied",
    created: "Created", last_used: "Last used", revoke: "Revoke", revoked: "revoked", enabled: "enabled",
    confirm_password: "Password (again)", tokens_per_day: "Tokens per day", requests_per_day: "Requests per day",
    cost_per_day: "Cost per day", by_model: "By model", by_chip: "By chip", requests: "requests",
    export_csv: "Export CSV", time: "Time", status: "Status", quota: "Quota", unlimited: "unlimited",
    group: "Group", role: "Role", redeem: "Redeem a code", code: "Code", redeemed: "Added to your quota:",
    catalogue: "Catalogue", users: "Users", groups: "Groups", codes: "Codes", moderation: "Moderation",
    alerts: "Alerts", audit: "Audit log", endpoints: "Endpoints", deployments: "Deployments", chips: "Chips",
    alias: "Alias", on: "on", off: "off", turn_off: "Turn off", turn_on: "Turn on",
    confirm_off: "Turn content moderation OFF for {cell}? Its input and output will no longer be checked.",
    confirm: "Confirm", cancel: "Cancel", kind: "Kind", message_col: "Message", delivered: "Delivered",
    actor: "Actor", action: "Action", target: "Target", ip: "Address", count: "Count", make_codes: "Make codes",
    nothing: "Nothing yet.", weight: "Weight", priority: "Priority", url: "URL or engine", rules: "Rule sets",
    keywords: "keywords", regexes: "regexes", scope: "Scope", global: "global", blocked: "blocked by moderation",
    loading: "Loading…", not_admin: "This page is for administrators.", bad_login: "Wrong user name or password.",
    limits: "Limits", you: "You", nodes: "Nodes", node: "Node", placement: "Placement", replicas: "Replicas",
    managed: "Managed deployments", engine: "Engine", instances: "Instances", source: "Source",
  },
  zh: {
    models: "模型广场", playground: "体验中心", compare: "M×N 对比", keys: "API 密钥", usage: "用量",
    profile: "个人中心", admin: "管理", login: "登录", logout: "退出", user: "用户名", password: "密码",
    lang: "English", model: "模型", chip: "芯片", context: "上下文长度", price: "价格(输入/输出,每百万)", state: "状态",
    example: "调用示例:", base_url: "Base URL", system: "系统提示词", send: "发送", stop: "停止",
    clear: "清空", temperature: "temperature", top_p: "top_p", top_k: "top_k", max_tokens: "max_tokens",
    presence_penalty: "presence_penalty", frequency_penalty: "frequency_penalty",
    repetition_penalty: "repetition_penalty", stop_seq: "stop(逗号分隔)", message: "消息",
    tokens: "tokens", ttft: "首字延迟", tps: "tokens/秒", cost: "费用", pick_cells: "选择要对比的单元(2–6 个)",
    prompt: "提示词", run: "运行", choose_2_6: "请选择 2 到 6 个单元。", name: "名称", create: "创建",
    key_once: "新密钥只显示这一次,请立即复制。", copy: "复制", copied: "已复制",
    created: "创建时间", last_used: "最近使用", revoke: "停用", revoked: "已停用", enabled: "启用",
    confirm_password: "再次输入密码", tokens_per_day: "每日 tokens", requests_per_day: "每日请求数",
    cost_per_day: "每日费用", by_model: "按模型", by_chip: "按芯片", requests: "请求",
    export_csv: "导出 CSV", time: "时间", status: "状态", quota: "额度", unlimited: "不限",
    group: "分组", role: "角色", redeem: "兑换码", code: "兑换码", redeemed: "已加入额度:",
    catalogue: "目录", users: "用户", groups: "分组", codes: "兑换码", moderation: "内容审核",
    alerts: "告警", audit: "审计日志", endpoints: "端点", deployments: "部署", chips: "芯片",
    alias: "别名", on: "开启", off: "关闭", turn_off: "关闭审核", turn_on: "开启审核",
    confirm_off: "确定关闭 {cell} 的内容审核吗?关闭后输入和输出都不再检查。",
    confirm: "确认", cancel: "取消", kind: "类型", message_col: "内容", delivered: "已推送",
    actor: "操作者", action: "操作", target: "对象", ip: "地址", count: "数量", make_codes: "生成兑换码",
    nothing: "暂无数据。", weight: "权重", priority: "优先级", url: "URL 或引擎", rules: "规则集",
    keywords: "关键词", regexes: "正则", scope: "范围", global: "全局", blocked: "已被内容审核拦截",
    loading: "加载中…", not_admin: "此页面仅限管理员。", bad_login: "用户名或密码错误。",
    limits: "限额", you: "我", nodes: "节点", node: "节点", placement: "调度方式", replicas: "副本",
    managed: "托管部署", engine: "引擎", instances: "实例", source: "来源",
  },
};

export let lang = localStorage.getItem("mxn.lang") || (navigator.language.toLowerCase().startsWith("zh") ? "zh" : "en");

export function t(key, vars = {}) {
  let s = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, v);
  return s;
}

export function switchLang() {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("mxn.lang", lang);
}
